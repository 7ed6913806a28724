defmodule LibclusterRs.Test.JSON do
  @moduledoc false
  # A JSON encoder for test fixtures and benchmarks (the package has no JSON dependency): maps with
  # atom or string keys, lists, strings, numbers, booleans and nil. Returns iodata.

  def encode(nil), do: "null"
  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(n) when is_integer(n), do: Integer.to_string(n)
  def encode(n) when is_float(n), do: Float.to_string(n)
  def encode(a) when is_atom(a), do: string(Atom.to_string(a))
  def encode(s) when is_binary(s), do: string(s)

  def encode(list) when is_list(list) do
    [?[, list |> Enum.map(&encode/1) |> Enum.intersperse(?,), ?]]
  end

  def encode(map) when is_map(map) do
    pairs = Enum.map(map, fn {k, v} -> [string(to_string(k)), ?:, encode(v)] end)
    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  def encode_binary(term), do: IO.iodata_to_binary(encode(term))

  defp string(s) do
    [?", escape(s), ?"]
  end

  defp escape(s) do
    if String.contains?(s, ["\"", "\\", "\n", "\r", "\t"]) or
         Enum.any?(:binary.bin_to_list(s), &(&1 < 0x20)) do
      for <<c <- s>>, into: "" do
        case c do
          ?" -> "\\\""
          ?\\ -> "\\\\"
          ?\n -> "\\n"
          ?\r -> "\\r"
          ?\t -> "\\t"
          c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
          c -> <<c>>
        end
      end
    else
      s
    end
  end
end
