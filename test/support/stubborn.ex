# Compiled with the test support (not defined in membership_test.exs): test/mfa_guard_test.exs
# checks the MFAs the test files name, and may run before a test file defining them is loaded.
defmodule LibclusterRs.MembershipTest.Stubborn do
  # A connect MFA that traps exits and never returns: only a `:kill` ends it.
  def connect(test, node) do
    Process.flag(:trap_exit, true)
    send(test, {:stubborn, node, self()})

    receive do
      :never -> true
    end
  end

  def list_nodes, do: []
end
