[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,bench,script}/**/*.{ex,exs}"],
  line_length: 110
]
