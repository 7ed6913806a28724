defmodule LibclusterRs.Test.FakeDist do
  @moduledoc false
  # The one fake of the distribution for tests (STYLE.md 17): connect / disconnect / list_nodes MFAs
  # over a public ETS table owned by the test process, which holds which nodes are "up" and how each
  # call behaves. Every connect and disconnect is reported to the owner, always as
  #
  #   {:connect, node}     {:disconnect, node}
  #
  # (list_nodes is not reported: strategies call it every round). Calls behave like the real ones:
  # `:net_kernel.connect_node/1` answers true and the node is listed by `Node.list/0` afterwards,
  # `:erlang.disconnect_node/1` answers true if the node was up and false if not.
  #
  #   dist = FakeDist.new(up: [...], reachable: :all | [...], connect: b, disconnect: b, list_nodes: b)
  #   FakeDist.topology(dist, strategy, config, extra \\ [])   # a topology entry with the three MFAs
  #   FakeDist.mfas(dist)                                        # [connect:, disconnect:, list_nodes:]
  #   FakeDist.up(dist)                                          # the nodes up now, sorted
  #   FakeDist.calls(dist)                                       # [{op, node, at_ms}], call order
  #   FakeDist.peer(dist, node, connect: b, disconnect: b)      # one awkward peer
  #   FakeDist.bring_up(dist, nodes)                             # nodes already up, unreported
  #   FakeDist.take_all_down(dist)                               # the network is cut, unreported
  #   FakeDist.drop(dist, node)                                  # the peer drops the connection
  #   FakeDist.reply(pid, behaviour)                             # ends a :wait connect
  #   FakeDist.set(dist, :connect | :disconnect | :list_nodes, behaviour)
  #   FakeDist.reachable(dist, :all | [...])
  #
  # Connect behaviours (default `:accept`; nodes outside `reachable:` are `:refuse`):
  #   :accept                   true, and the node is up
  #   :refuse                   false (the real answer for a peer that is not there)
  #   :accept_then_drop         true, but the node is never listed (a peer that accepts and drops at once)
  #   {:accept_then_drop, ms}   true, listed, then gone from list_nodes once `ms` ms have passed
  #   {:reply, term}            returns `term` (true, false, :ignored, garbage), nothing else changes
  #   {:delay, ms, behaviour}   sleeps `ms` ms first (a slow handshake), then behaves as `behaviour`
  #   :hang                     never returns (a peer whose handshake never finishes)
  #   :wait                     waits until the test calls `reply(pid, behaviour)`, then behaves so
  # A connect that does not return at once (:hang, :wait) also reports the calling process, after
  # `{:connect, node}`, as `{:pending, :connect, node, pid}`.
  #   {kind, p}                 a fault (LibclusterRs.Test.Faulty): raise, exit, throw, garbage or hang
  #                             always (p = 1.0) or on every round(1 / p)-th call
  # Disconnect behaviours (default `:accept`): `:accept` (down; true if it was up, else false),
  #   `{:reply, term}` (down, returns `term`), `:hang`, `{kind, p}`; per node with `peer/3`.
  # list_nodes behaviours (default `:accept`): `:accept`, `{:lag, ms}` (answers after `ms` ms, with
  #   the nodes up when it was called), `:hang`, `{kind, p}`.
  #
  # Once the owner has exited (a topology outlives its test by a few ms) the table is gone and the
  # network is down: connect answers false, disconnect false, list_nodes [].

  alias LibclusterRs.Test.Faulty

  @ops [:connect, :disconnect, :list_nodes]

  def new(opts \\ []) do
    dist = :ets.new(:fake_dist, [:public, :set])
    :ets.insert(dist, {:__owner__, self()})

    for op <- @ops, do: :ets.insert(dist, {{:behaviour, op}, Keyword.get(opts, op, :accept)})
    :ets.insert(dist, {:__reachable__, Keyword.get(opts, :reachable, :all)})
    for node <- Keyword.get(opts, :up, []), do: :ets.insert(dist, {{:up, node}, :infinity})
    dist
  end

  @doc "The connect / disconnect / list_nodes MFAs of `dist`, as topology keys."
  def mfas(dist) do
    [
      connect: {__MODULE__, :connect, [dist]},
      disconnect: {__MODULE__, :disconnect, [dist]},
      list_nodes: {__MODULE__, :list_nodes, [dist]}
    ]
  end

  @doc "A topology entry for `Cluster.Supervisor` over `dist`."
  def topology(dist, strategy, config, extra \\ []) do
    [strategy: strategy, config: config] ++ mfas(dist) ++ extra
  end

  @doc "Sets how `node` answers connect and/or disconnect: `peer(dist, node, connect: b, disconnect: b)`."
  def peer(dist, node, behaviours) do
    for {op, behaviour} <- behaviours,
        op in [:connect, :disconnect],
        do: :ets.insert(dist, {{:peer, op, node}, behaviour})

    :ok
  end

  @doc "Marks `nodes` up, as if they had connected (no message is sent)."
  def bring_up(dist, nodes), do: for(node <- nodes, do: :ets.insert(dist, {{:up, node}, :infinity}))

  @doc "Sets which nodes accept a connect (`:all` or a list); the others refuse."
  def reachable(dist, nodes), do: :ets.insert(dist, {:__reachable__, nodes})

  @doc "Sets the default behaviour of one call."
  def set(dist, op, behaviour) when op in @ops, do: :ets.insert(dist, {{:behaviour, op}, behaviour})

  @doc "Takes every node down, as if the network had been cut (no message is sent)."
  def take_all_down(dist), do: :ets.match_delete(dist, {{:up, :_}, :_})

  @doc "Takes `node` down, as a peer that drops the connection does (no message is sent)."
  def drop(dist, node), do: :ets.delete(dist, {:up, node})

  @doc "Ends the pending `:wait` connect running in `pid`: it behaves as `behaviour`."
  def reply(pid, behaviour), do: send(pid, {__MODULE__, :reply, behaviour})

  @doc """
  Every connect and disconnect so far, in call order, as `{op, node, at}` where `at` is the
  monotonic time (ms) at which the call started: for timing checks that must not include the
  delivery of the message to the test.
  """
  def calls(dist) do
    for {{:call, _}, op, node, at} <- :ets.tab2list(dist) |> Enum.sort(), do: {op, node, at}
  end

  @doc "The nodes up now, sorted."
  def up(dist), do: dist |> up_nodes() |> Enum.sort()

  def connect(dist, node) do
    report(dist, {:connect, node})
    connect_as(dist, node, connect_behaviour(dist, node))
  rescue
    ArgumentError -> false
  end

  def disconnect(dist, node) do
    report(dist, {:disconnect, node})

    case peer_behaviour(dist, :disconnect, node) || behaviour(dist, :disconnect) do
      :accept -> take_down(dist, node)
      {:reply, term} -> take_down(dist, node) && term
      other -> misbehave(dist, :disconnect, other, fn -> take_down(dist, node) end)
    end
  rescue
    ArgumentError -> false
  end

  def list_nodes(dist) do
    case behaviour(dist, :list_nodes) do
      :accept ->
        up_nodes(dist)

      {:lag, ms} ->
        nodes = up_nodes(dist)
        Process.sleep(ms)
        nodes

      other ->
        misbehave(dist, :list_nodes, other, fn -> up_nodes(dist) end)
    end
  rescue
    ArgumentError -> []
  end

  defp connect_as(dist, node, :accept), do: :ets.insert(dist, {{:up, node}, :infinity})
  defp connect_as(_dist, _node, :refuse), do: false
  defp connect_as(_dist, _node, :accept_then_drop), do: true
  defp connect_as(_dist, _node, {:reply, term}), do: term

  defp connect_as(dist, node, {:accept_then_drop, ms}),
    do: :ets.insert(dist, {{:up, node}, now() + ms})

  defp connect_as(dist, node, :hang) do
    report(dist, {:pending, :connect, node, self()})
    Process.sleep(:infinity)
  end

  defp connect_as(dist, node, :wait) do
    report(dist, {:pending, :connect, node, self()})

    receive do
      {__MODULE__, :reply, behaviour} -> connect_as(dist, node, behaviour)
    end
  end

  defp connect_as(dist, node, {:delay, ms, behaviour}) do
    Process.sleep(ms)
    connect_as(dist, node, behaviour)
  end

  defp connect_as(dist, node, other),
    do: misbehave(dist, :connect, other, fn -> connect_as(dist, node, :accept) end)

  # A fault; the calls it skips (Faulty answers :ok) behave.
  defp misbehave(_dist, _op, :hang, _behave), do: Process.sleep(:infinity)

  defp misbehave(dist, op, {kind, p}, behave) do
    with :ok <- Faulty.misbehave(dist, {kind, p}, op), do: behave.()
  end

  defp take_down(dist, node) do
    was_up = node in up_nodes(dist)
    :ets.delete(dist, {:up, node})
    was_up
  end

  defp up_nodes(dist) do
    now = now()

    for {{:up, node}, until} <- :ets.tab2list(dist), reduce: [] do
      acc ->
        if until == :infinity or until > now do
          [node | acc]
        else
          :ets.delete(dist, {:up, node})
          acc
        end
    end
  end

  defp connect_behaviour(dist, node) do
    with nil <- peer_behaviour(dist, :connect, node) do
      case :ets.lookup_element(dist, :__reachable__, 2) do
        :all -> behaviour(dist, :connect)
        reachable -> if node in reachable, do: behaviour(dist, :connect), else: :refuse
      end
    end
  end

  defp peer_behaviour(dist, op, node) do
    case :ets.lookup(dist, {:peer, op, node}) do
      [{_, behaviour}] -> behaviour
      [] -> nil
    end
  end

  defp behaviour(dist, op), do: :ets.lookup_element(dist, {:behaviour, op}, 2)

  defp report(dist, message) do
    owner = :ets.lookup_element(dist, :__owner__, 2)

    with {op, node} when op in [:connect, :disconnect] <- message,
         do: :ets.insert(dist, {{:call, System.unique_integer([:monotonic])}, op, node, now()})

    send(owner, message)
  end

  defp now, do: System.monotonic_time(:millisecond)
end
