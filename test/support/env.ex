defmodule LibclusterRs.Test.Env do
  @moduledoc false
  # Which tagged tests can run here, decided once.

  def excludes do
    excludes = []
    excludes = if root?(), do: excludes, else: [{:root, true} | excludes]
    excludes = if System.find_executable("dnsmasq"), do: excludes, else: [{:dnsmasq, true} | excludes]
    if excludes != [], do: IO.puts("excluding #{inspect(excludes)} (needs root / tools not found)")
    excludes
  end

  def root? do
    match?({"0\n", 0}, System.cmd("id", ["-u"])) and System.find_executable("ip") != nil
  end
end
