defmodule LibclusterRs.Test.Env do
  @moduledoc false
  # Which tagged tests run here, decided once: the lanes of their own (`:packaging`, `:slow`) are
  # excluded unless asked for (`--only packaging`, `--include slow`), and the tests that need root
  # or a tool this machine lacks are excluded with a message.

  @lanes [:packaging, :slow]

  def excludes do
    missing = []
    missing = if root?(), do: missing, else: [{:root, true} | missing]
    missing = if System.find_executable("dnsmasq"), do: missing, else: [{:dnsmasq, true} | missing]
    if missing != [], do: IO.puts("excluding #{inspect(missing)} (needs root / tools not found)")
    Enum.map(@lanes, &{&1, true}) ++ missing
  end

  def root? do
    match?({"0\n", 0}, System.cmd("id", ["-u"])) and System.find_executable("ip") != nil
  end
end
