defmodule LibclusterRs.Membership.Probe do
  @moduledoc """
  Shortens the wait of peers that come back: while a membership has peers it cannot reach (in
  backoff, or with an attempt that hangs), their hosts' epmd is asked which node names it has
  registered, and a peer whose name appears again is handed back to the membership to be redialled
  at once.

  A membership owns one probe (a process linked to it, started unless `probe: false`, see
  `LibclusterRs.Membership`). After every change the membership tells the probe which nodes it is
  dialling or has in backoff, with their failure counts (`watch/2`); the probe sends the membership
  `{:probe_reachable, nodes}`, and the membership makes those nodes due now. The probe never
  connects anything and never delays anything: it only ends waits early. Which nodes are
  connected, and whether, stays the membership's (and the connect MFA's) decision.

  ## What is asked, and how often

    * every `500` ms, and only while there are such peers, one EPMD `NAMES` query per
      distinct host (several peers on one host share it), each with a deadline of `400` ms, through
      the NIF (`LibclusterRs.Native.epmd_names_start/4`): no scheduler and no `net_kernel` call waits for
      it. A round starts only once the previous one has ended, and asks at most 256 hosts (more
      take turns, round by round)
    * the epmd port is `ERL_EPMD_PORT` when set, else `4369`
    * a peer's nodeup (seen through `:net_kernel.monitor_nodes/1`) stops its probing at once

  ## Which hosts are asked

  Only hosts that cannot cause a lookup outside this machine:

    * IP literals (`app@10.0.0.3`), and
    * host names the local hosts table resolves (`:inet_hosts`: `/etc/hosts` and names added with
      `:inet_db.add_host/2`), asked by the address found there.

  A host name that only DNS (or another resolver) could resolve is never looked up by the probe.
  Such a peer is not probed; it is redialled early when any probed peer of the same membership comes
  back (the network is back), and otherwise by its backoff, as without a probe.

  ## When a peer is reported

    * when its name appears in its host's epmd after it did not (the host did not answer, or
      answered without it), or at the first answer after it entered backoff: that is the peer
      coming back, or a restarted node registering again
    * once more if the attempt that was in flight at that moment fails afterwards (its failure count
      grows while its name stays registered): a connect that started during the partition may end
      in failure after the network is back
    * peers whose host cannot be probed, when some probed peer is reported as coming back, once per
      failure count

  So a peer whose epmd answers but whose connects keep failing (another cookie, a firewalled
  distribution port) gets at most two early attempts per return, then waits out its backoff as
  usual: the probe never turns backoff into hammering.

  ## Connection setups stuck in the partition

  A connect made during a partition does not fail at once: its TCP SYNs are lost, the kernel resends
  them after 1 s, 3 s, ..., and `net_kernel` keeps the setup pending for up to `net_setuptime`
  (7 s by default). While it is pending, every other connect to that node waits for it, and the
  peer's own connect to us is refused when its name sorts lower (OTP's rule for simultaneous
  connects). Measured on 5 nodes, such setups were pending for every pair across the split when the
  network came back, and they, not the backoff, set the heal time.

  So when a peer returns, the outgoing setups towards it that were already pending when its host
  last failed to answer, and that are still blocked in their TCP connect, are ended as
  `net_setuptime` would end them later (the setup process is killed; `net_kernel` answers its
  callers `false`, and the membership's follow-up attempt starts a fresh setup at once). They are
  found in `net_kernel`'s `sys_dist` table and recognised by shape (a pending `#connection{}` whose
  owner is a `do_setup` process currently in `prim_inet` connect). An OTP release that stores them
  differently only loses this part; a setup that has got past its TCP connect is never touched.

  ## When it runs, and custom connect MFAs

  By default (`probe: :auto`) a membership starts a probe when its topology connects with the
  default `{:net_kernel, :connect_node, []}`: epmd registration is then exactly what the connect
  depends on. A custom connect MFA may not use epmd, or Erlang distribution, at all (libcluster's
  tests connect by sending messages), so it gets no probe unless `probe: true` is given; the probe
  then only moves the MFA's retries earlier, and the MFA still decides what connecting means.
  Where nodes do not register in epmd (an `-epmd_module` without epmd), peers are never reported
  and the probe costs one refused or unanswered query per host every 500 ms while peers are
  unreachable; `probe: false` turns it off. With `:auto`, no query is sent while this node is not
  distributed (net_kernel could connect nothing anyway).
  """
  use GenServer

  @interval 500
  @deadline 400
  # At most this many hosts are asked per round; more take turns.
  @max_hosts 256

  @typedoc "A node being dialled or in backoff, and its failure count (0 before its first failure)."
  @type watched :: %{node() => non_neg_integer()}

  # `by_host`: address => the watched nodes on it, so that an answer touches only its host's nodes.
  defstruct watched: %{}, by_host: %{}, resolve: nil, setups: nil, abort: []

  @type t :: %__MODULE__{}

  ## API

  @doc """
  Starts a probe that reports to `owner` (default: the caller), linked to the caller.

  Options: `:topology` (for log lines), `:interval` and `:deadline` in ms (defaults `500` and
  `400`), `:port` (the epmd port; default `ERL_EPMD_PORT` or `4369`), `:owner`,
  `:only_when_distributed` (default `false`: ask nothing while this node is not distributed); for tests,
  `:resolve` (host -> address or nil) and `:setups` (node -> stuck setup pids).
  """
  @spec start_link(Keyword.t()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    opts = Keyword.put_new(opts, :owner, self())
    GenServer.start_link(__MODULE__, opts)
  end

  @doc """
  Sets the nodes to probe (being dialled or in backoff), with their failure counts. Nodes not in
  `watched` stop being probed. A `nil` probe (probing disabled) is accepted and ignored.
  """
  @spec watch(pid() | nil, watched()) :: :ok
  def watch(nil, _watched), do: :ok
  def watch(probe, watched) when is_map(watched), do: GenServer.cast(probe, {:watch, watched})

  ## Pure core: decisions as functions of state, host answers and the local hosts table

  @doc false
  # `resolve`: host -> address or nil (local table only); `setups`: node -> pids of its stuck
  # outgoing connection setups (see stuck_setups/1).
  @spec new((String.t() -> String.t() | nil), (node() -> [pid()])) :: t()
  def new(resolve \\ &local_address/1, setups \\ &stuck_setups/1),
    do: %__MODULE__{resolve: resolve, setups: setups}

  @doc false
  # Takes the membership's set of unreachable nodes. New nodes get their host resolved once (locally only);
  # nodes that left the set are forgotten, so their next streak starts afresh.
  @spec put_watched(t(), watched()) :: t()
  def put_watched(%__MODULE__{} = p, watched) do
    entries =
      Map.new(watched, fn {node, failures} ->
        entry =
          case Map.fetch(p.watched, node) do
            {:ok, entry} -> entry
            :error -> new_entry(node, p.resolve)
          end

        {node, %{entry | failures: failures}}
      end)

    by_host =
      entries
      |> Enum.reject(fn {_node, entry} -> is_nil(entry.host) end)
      |> Enum.group_by(fn {_node, entry} -> entry.host end, fn {node, _entry} -> node end)

    %{p | watched: entries, by_host: by_host}
  end

  @doc false
  # The addresses to ask in one round: one per distinct host.
  @spec hosts(t()) :: [String.t()]
  def hosts(%__MODULE__{} = p), do: Map.keys(p.by_host)

  @doc false
  # The hosts of round number `round`: all of them, or a window of `max` that moves each round.
  @spec round_hosts([String.t()], non_neg_integer(), pos_integer()) :: [String.t()]
  def round_hosts(hosts, _round, max) when length(hosts) <= max, do: hosts

  def round_hosts(hosts, round, max) do
    hosts = Enum.sort(hosts)
    offset = rem(round * max, length(hosts))
    {tail, head} = Enum.split(hosts, offset)
    Enum.take(head ++ tail, max)
  end

  @doc false
  # One host's answer: `{:ok, names}` or `{:error, _}`. Returns the nodes to report.
  @spec answer(t(), String.t(), {:ok, [String.t()]} | {:error, term()}) :: {[node()], t()}
  def answer(%__MODULE__{} = p, host, result) do
    names =
      case result do
        {:ok, names} -> MapSet.new(names)
        {:error, _} -> MapSet.new()
      end

    {reports, returned?, watched, abort} =
      p.by_host
      |> Map.get(host, [])
      |> Enum.reduce({[], false, p.watched, p.abort}, fn node, {reports, returned?, acc, abort} ->
        entry = Map.fetch!(acc, node)
        # While the host does not answer, the connection setups stuck towards its nodes were
        # started during the outage: remember those of the last such answer. If the next answer
        # is the node's return, they are ended (see abort_stale/2).
        stale = entry.stale

        entry =
          if match?({:error, _}, result),
            do: %{entry | stale: MapSet.new(p.setups.(node))},
            else: %{entry | stale: MapSet.new()}

        case observe(entry, MapSet.member?(names, entry.basename)) do
          {:edge, entry} ->
            abort = Enum.map(stale, &{node, &1}) ++ abort
            {[node | reports], true, Map.put(acc, node, entry), abort}

          {:followup, entry} ->
            {[node | reports], returned?, Map.put(acc, node, entry), abort}

          {:quiet, entry} ->
            {reports, returned?, Map.put(acc, node, entry), abort}
        end
      end)

    p = %{p | watched: watched, abort: abort}

    if returned? do
      {blind, p} = unprobed_due(p)
      {Enum.sort(reports ++ blind), p}
    else
      {Enum.sort(reports), p}
    end
  end

  @doc false
  # Follow-ups due now: a reported node whose attempt failed after the report while its name is
  # still registered (the last answer showed it) is reported again at once, not at the next round.
  @spec followups(t()) :: {[node()], t()}
  def followups(%__MODULE__{} = p) do
    Enum.reduce(p.watched, {[], p}, fn
      {node, %{seen: :present, followup: true, reported: r, failures: f} = entry}, {acc, p} when f > r ->
        entry = %{entry | reported: f, followup: false}
        {[node | acc], %{p | watched: Map.put(p.watched, node, entry)}}

      _other, acc ->
        acc
    end)
    |> then(fn {nodes, p} -> {Enum.sort(nodes), p} end)
  end

  @doc false
  # The `{node, setup_pid}` pairs to abort, and the state without them.
  @spec take_abort(t()) :: {[{node(), pid()}], t()}
  def take_abort(%__MODULE__{} = p), do: {p.abort, %{p | abort: []}}

  @doc false
  @spec forget(t(), node()) :: t()
  def forget(%__MODULE__{} = p, node),
    do: put_watched(p, p.watched |> Map.delete(node) |> Map.new(fn {n, e} -> {n, e.failures} end))

  # `seen` is what the last answer said: :unknown (none since the streak began), :absent, :present.
  defp new_entry(node, resolve) do
    [basename, host] = node |> Atom.to_string() |> String.split("@", parts: 2) |> pad_host()

    %{
      basename: basename,
      host: host && resolve.(host),
      failures: 0,
      seen: :unknown,
      reported: nil,
      followup: false,
      stale: MapSet.new()
    }
  end

  defp pad_host([basename, host]), do: [basename, host]
  defp pad_host([basename]), do: [basename, nil]

  defp observe(entry, false), do: {:quiet, %{entry | seen: :absent, followup: false}}

  defp observe(%{seen: seen} = entry, true) when seen != :present,
    do: {:edge, %{entry | seen: :present, reported: entry.failures, followup: true}}

  defp observe(%{followup: true, reported: r, failures: f} = entry, true) when f > r,
    do: {:followup, %{entry | reported: f, followup: false}}

  defp observe(entry, true), do: {:quiet, entry}

  # Peers that cannot be probed are redialled when a probed one returns, once per failure count.
  defp unprobed_due(p) do
    Enum.reduce(p.watched, {[], p}, fn
      {node, %{host: nil, reported: r, failures: f} = entry}, {acc, p} when r != f ->
        {[node | acc], %{p | watched: Map.put(p.watched, node, %{entry | reported: f})}}

      _other, acc ->
        acc
    end)
  end

  @doc false
  # The address to ask for `host`, without any lookup outside this machine: an IP literal as it is,
  # a name through the local hosts table only, otherwise nil (not probed).
  @spec local_address(String.t()) :: String.t() | nil
  def local_address(host) do
    chars = to_charlist(host)

    case :inet.parse_strict_address(chars) do
      {:ok, ip} ->
        ip |> :inet.ntoa() |> to_string()

      {:error, _} ->
        Enum.find_value([:inet, :inet6], fn family ->
          case :inet_hosts.gethostbyname(chars, family) do
            {:ok, {:hostent, _, _, _, _, [ip | _]}} -> ip |> :inet.ntoa() |> to_string()
            _ -> nil
          end
        end)
    end
  end

  @doc false
  # The outgoing connection setups to `node` that net_kernel has pending and that are blocked in a
  # TCP connect right now (a SYN lost in a partition is resent only after 1 s, 3 s, ..., and the
  # setup holds the node for up to `net_setuptime`, 7 s by default: meanwhile every other connect to
  # it, ours or the peer's, waits or is refused). Read from net_kernel's `sys_dist` table
  # (`#connection{}` records, checked field by field): any other shape yields `[]`, so an OTP that
  # keeps this elsewhere only loses the acceleration.
  @spec stuck_setups(node()) :: [pid()]
  def stuck_setups(node), do: node |> pending_setups() |> Enum.filter(&stuck_in_connect?/1)

  @doc false
  # How far the connection setup to `node` that net_kernel has pending has got (read as
  # stuck_setups/1 reads it):
  #
  #   * `:waiting` - an outgoing setup that has heard nothing from the peer's host yet: it is in its
  #     epmd lookup (`erl_epmd`) or in a TCP connect, with no reply waiting in its mailbox. A dead
  #     or silent peer keeps a setup here until `net_setuptime`
  #   * `:answered` - a pending setup past that point (in its handshake), or one the peer started
  #   * `:none` - nothing pending: the setup has not reached net_kernel yet, has ended, or the
  #     node is connected; an OTP that keeps setups elsewhere always yields this
  #
  # LibclusterRs.Membership.Pace frees a first dial's pacing slot on `:waiting`.
  @spec setup_stage(node()) :: :waiting | :answered | :none
  def setup_stage(node) do
    case pending_setups(node) do
      [] -> :none
      owners -> if Enum.all?(owners, &waiting?/1), do: :waiting, else: :answered
    end
  end

  # The owners of the `#connection{}` records net_kernel has pending for `node`.
  defp pending_setups(node) do
    :ets.lookup(:sys_dist, node)
    |> Enum.flat_map(fn
      conn when is_tuple(conn) and tuple_size(conn) > 4 and elem(conn, 0) == :connection ->
        owner = elem(conn, 4)
        if elem(conn, 1) == node and elem(conn, 3) == :pending and is_pid(owner), do: [owner], else: []

      _ ->
        []
    end)
  rescue
    ArgumentError -> []
  end

  defp waiting?(pid) do
    case Process.info(pid, [:initial_call, :current_function, :message_queue_len]) do
      [initial_call: {_, :do_setup, _}, current_function: {:erl_epmd, _, _}, message_queue_len: 0] ->
        true

      [initial_call: {_, :do_setup, _}, current_function: {:prim_inet, connect, _}, message_queue_len: 0]
      when connect in [:connect, :connect0, :connect_cmd] ->
        true

      _ ->
        false
    end
  end

  defp stuck_in_connect?(pid) when is_pid(pid) do
    case Process.info(pid, [:initial_call, :current_function]) do
      # prim_inet's connect/connect0 up to OTP 25, connect_cmd from OTP 26 (seen on 27 and 29).
      [initial_call: {_, :do_setup, _}, current_function: {:prim_inet, connect, _}]
      when connect in [:connect, :connect0, :connect_cmd] ->
        true

      _ ->
        false
    end
  end

  defp stuck_in_connect?(_), do: false

  # A setup that was already pending while its host did not answer, and is still pending and
  # blocked in its TCP connect now that the host answers, is ended as net_setuptime would end it
  # later: its callers get `false` and the next connect starts afresh.
  defp abort_stale(s, pairs) do
    for {node, pid} <- pairs, pid in s.setups.(node) do
      if s.topology,
        do: Cluster.Logger.debug(s.topology, "ending a stale connection setup to #{inspect(node)}")

      Process.exit(pid, :kill)
    end

    :ok
  end

  ## Server

  @impl true
  def init(opts) do
    interval = Keyword.get(opts, :interval, @interval)
    setups = Keyword.get(opts, :setups, &stuck_setups/1)

    state = %{
      owner: Keyword.fetch!(opts, :owner),
      topology: Keyword.get(opts, :topology),
      interval: interval,
      deadline: Keyword.get(opts, :deadline, min(@deadline, interval)),
      port: Keyword.get_lazy(opts, :port, &Cluster.Strategy.LocalEpmd.default_epmd_port/0),
      setups: setups,
      core: new(Keyword.get(opts, :resolve, &local_address/1), setups),
      max_hosts: Keyword.get(opts, :max_hosts, @max_hosts),
      only_when_distributed: Keyword.get(opts, :only_when_distributed, false),
      rounds: 0,
      timer: nil,
      round: nil
    }

    :ok = :net_kernel.monitor_nodes(true)
    {:ok, state}
  end

  @impl true
  def handle_cast({:watch, watched}, s) do
    {reports, core} = s.core |> put_watched(watched) |> followups()
    report(s, reports)
    {:noreply, schedule(%{s | core: core})}
  end

  @impl true
  def handle_info(:tick, s) do
    s = %{s | timer: nil}

    # Not distributed (yet): net_kernel can connect nothing, so nothing is worth asking.
    idle? = s.only_when_distributed and not Node.alive?()

    s =
      case {s.round, hosts(s.core)} do
        # The previous round is still out (a loaded machine): skip this tick.
        {{_tag, _handle}, _} ->
          s

        {nil, []} ->
          s

        {nil, _hosts} when idle? ->
          s

        {nil, hosts} ->
          tag = make_ref()
          hosts = round_hosts(hosts, s.rounds, s.max_hosts)
          handle = LibclusterRs.Native.epmd_names_start(tag, hosts, s.port, s.deadline)
          %{s | round: {tag, handle}, rounds: s.rounds + 1}
      end

    {:noreply, schedule(s)}
  end

  def handle_info({:libcluster_rs, tag, event}, %{round: {tag, _handle}} = s) do
    case event do
      {:epmd_names, host, result} ->
        {reports, core} = answer(s.core, host, result)
        {abort, core} = take_abort(core)
        abort_stale(s, abort)
        report(s, reports)
        {:noreply, %{s | core: core}}

      :done ->
        {:noreply, schedule(%{s | round: nil})}

      _other ->
        {:noreply, s}
    end
  end

  def handle_info({:nodeup, node}, s), do: {:noreply, %{s | core: forget(s.core, node)}}
  def handle_info(_other, s), do: {:noreply, s}

  defp report(_s, []), do: :ok

  defp report(s, nodes) do
    if s.topology do
      Cluster.Logger.debug(s.topology, "epmd probe: #{inspect(nodes)} reachable again, redialling now")
    end

    send(s.owner, {:probe_reachable, nodes})
  end

  # Tick while there is something to probe; stop ticking when there is not.
  defp schedule(%{core: %{watched: watched}, timer: timer} = s) when map_size(watched) == 0 do
    if timer, do: Process.cancel_timer(timer)
    %{s | timer: nil}
  end

  defp schedule(%{timer: nil} = s), do: %{s | timer: Process.send_after(self(), :tick, s.interval)}
  defp schedule(s), do: s
end
