defmodule LibclusterRs.Test.MFA do
  @moduledoc false
  # Every MFA a test passes must exist with the arity it is called with (STYLE.md 21): a topology's
  # `connect` and `disconnect` are called with the node appended (args + 1), `list_nodes` with its
  # args. `{Kernel, :send, [pid, :connect]}` calls `Kernel.send/3`, which does not exist: each
  # call raises, the topology contains the raise, and a `refute_received {:connect, _}` after it
  # can never fail. So:
  #
  #   MFA.recorder(self(), :connect)        # {MFA, :record, [pid, :connect, true]}: sends {:connect, node}
  #   MFA.check!({m, f, a}, :connect)       # raises unless m.f/(length(a) + 1) is exported
  #   MFA.check_topology!(spec)             # the :connect, :disconnect and :list_nodes of one topology
  #
  # The topology helpers (DiscoverRun.configure!/1, Peer.start_cluster/2, FakeDist.topology/4) check
  # what they are given, and test/mfa_guard_test.exs checks every literal MFA under those keys in
  # the test sources.

  @calls %{connect: 1, disconnect: 1, list_nodes: 0}

  @doc "The arity the library adds to an MFA of `kind` (`:connect`, `:disconnect`, `:list_nodes`)."
  def extra_arity(kind), do: Map.fetch!(@calls, kind)

  @doc "The topology keys whose values are MFAs."
  def keys, do: Map.keys(@calls)

  @doc """
  A connect or disconnect MFA that reports each call to `pid` as `{tag, node}` and returns
  `reply` (default `true`, a successful connect).
  """
  def recorder(pid, tag, reply \\ true) when is_pid(pid) and is_atom(tag),
    do: {__MODULE__, :record, [pid, tag, reply]}

  @doc false
  def record(pid, tag, reply, node) do
    send(pid, {tag, node})
    reply
  end

  @doc "A list_nodes MFA that always raises (it runs on `:peer` nodes too: it is compiled here)."
  def raising_list_nodes, do: {__MODULE__, :raise_list_nodes, []}

  @doc false
  def raise_list_nodes, do: raise("list_nodes is down")

  @doc "Raises ArgumentError unless `mfa` is exported with the arity a `kind` MFA is called with."
  def check!({m, f, a} = mfa, kind) when is_atom(m) and is_atom(f) and is_list(a) do
    arity = length(a) + extra_arity(kind)

    unless Code.ensure_loaded?(m) and function_exported?(m, f, arity) do
      raise ArgumentError,
            "the #{kind} MFA #{inspect(mfa)} would call #{inspect(m)}.#{f}/#{arity}, which does not exist"
    end

    mfa
  end

  def check!(other, kind), do: raise(ArgumentError, "the #{kind} MFA is not an MFA: #{inspect(other)}")

  @doc "Checks the MFAs of one topology's spec (a keyword list); returns it."
  def check_topology!(spec) when is_list(spec) do
    for kind <- keys(), mfa = spec[kind], do: check!(mfa, kind)
    spec
  end

  @doc "Checks the MFAs of every topology in `topologies` (`[name: spec]`); returns them."
  def check_topologies!(topologies) do
    for {_name, spec} <- topologies, do: check_topology!(spec)
    topologies
  end
end
