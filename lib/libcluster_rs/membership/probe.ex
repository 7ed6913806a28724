defmodule LibclusterRs.Membership.Probe do
  @moduledoc """
  Shortens the wait of peers that come back: while a membership has peers it cannot reach (in
  backoff, lost and being redialled, or with a dial waiting on a silent host), their hosts' epmd is asked which node names it has
  registered, and a peer whose name appears again is handed back to the membership to be redialled
  at once.

  A membership owns one probe (a process linked to it, started unless `probe: false`, see
  `LibclusterRs.Membership`). When that set changes the membership tells the probe which nodes
  are in backoff, lost and being redialled, or have a dial seen waiting on a silent host, with
  their failure counts (`watch/2`;
  `LibclusterRs.Membership.Peers.backed_off/3`: a node on its way to its first connection is not
  watched, so a cluster that starts together does not have every node ask every other host's
  epmd twice a second while it forms); the probe sends the membership
  `{:probe_reachable, nodes}`, and the membership makes those nodes due now. The probe never
  connects anything and never delays anything: it only ends waits early. Which nodes are
  connected, and whether, stays the membership's (and the connect MFA's) decision.

  ## What is asked, and how often

    * every `500` ms, and only while there are such peers, one EPMD `NAMES` query per
      distinct host (several peers on one host share it), each with a deadline of `400` ms, through
      the NIF (`LibclusterRs.Native.epmd_names_start/4`): no scheduler and no `net_kernel` call waits for
      it. A round starts only once the previous one has ended, and asks at most 256 hosts (more
      take turns, round by round)
    * the epmd port is the one OTP's `erl_epmd` uses: `-epmd_port` (which `erl` sets from
      `ERL_EPMD_PORT`), else `ERL_EPMD_PORT`, else `4369`
    * without epmd (`-start_epmd false -erl_epmd_port PORT`, or a custom `-epmd_module`), each
      peer's distribution port is asked of the distribution's own `:net_kernel.epmd_module()`, as
      the distribution asks it (`address_please/3` when exported, else `port_please/3`), and tried
      with a TCP connect that is closed at once, all within the same deadline, in a process of the
      probe's (see `method/0`). A port that accepts is the peer back; a refused one, its host there
      without it
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
  found in `net_kernel`'s `sys_dist` table and recognised by shape: a pending `#connection{}` whose
  owner (the process the distribution module's `setup/5` returned) is currently in `prim_inet`'s
  connect, whether for its epmd query or its distribution connect. The owner's initial call is not
  looked at: it is `inet_tcp_dist:do_setup/7` under `inet_tcp`, but a fun (`erlang:apply/2`) under
  `inet_tls`. Checked on OTP 25 (`prim_inet:connect0/3`), 27 and 29 (`prim_inet:connect_cmd/3`),
  with `inet_tcp` and `inet_tls`, with and without epmd. An OTP release that stores them
  differently only loses this part; a setup that has got past its TCP connect is never touched.

  ## When it runs, and custom connect MFAs

  By default (`probe: :auto`) a membership starts a probe when its topology connects with the
  default `{:net_kernel, :connect_node, []}`: epmd registration is then exactly what the connect
  depends on. A custom connect MFA may not use epmd, or Erlang distribution, at all (libcluster's
  tests connect by sending messages), so it gets no probe unless `probe: true` is given; the probe
  then only moves the MFA's retries earlier, and the MFA still decides what connecting means.
  Where nodes do not register in epmd, the probe tries their distribution ports instead (above):
  one TCP connection to each unreachable peer's port every 500 ms, accepted and closed at once
  (the peer's distribution sees a connection that ends before its handshake); `probe: false`
  turns it off. With `:auto`, no query is sent while this node is not
  distributed (net_kernel could connect nothing anyway).
  """
  use GenServer

  @interval 500
  @deadline 400
  # At most this many hosts are asked per round; more take turns.
  @max_hosts 256
  # :counters indexes
  @reported 1
  @setups_ended 2

  @typedoc "A node being dialled or in backoff, and its failure count (0 before its first failure)."
  @type watched :: %{node() => non_neg_integer()}

  # `by_host`: address => the watched nodes on it, so that an answer touches only its host's nodes.
  defstruct watched: %{}, by_host: %{}, resolve: nil, setups: nil, abort: []

  @type t :: %__MODULE__{}

  ## API

  @doc """
  Starts a probe that reports to `owner` (default: the caller), linked to the caller.

  Options: `:topology` (for log lines), `:interval` and `:deadline` in ms (defaults `500` and
  `400`), `:port` (ask epmd on this port), `:method` (see `method/0`; default: what the
  distribution uses), `:owner`,
  `:only_when_distributed` (default `false`: ask nothing while this node is not distributed); for tests,
  `:resolve` (host -> address or nil) and `:setups` (node -> stuck setup pids).
  """
  @spec start_link(Keyword.t()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    opts = Keyword.put_new(opts, :owner, self())
    GenServer.start_link(__MODULE__, opts)
  end

  @doc """
  What the probe does and has done: `:method` (see `method/0`), `:reported` (peers handed back to
  the membership as reachable again) and `:setups_ended` (connection setups stuck in a partition
  that were ended), counted since it started. Read from counters: never waits for a round.
  """
  @spec stats(pid()) :: %{method: term(), reported: non_neg_integer(), setups_ended: non_neg_integer()}
  def stats(probe) do
    {method, counters} = counters(probe)
    stats_of(method, counters)
  end

  @doc false
  # The probe's method and counters, for its owner to read without a call (`stats_of/2`).
  @spec counters(pid()) :: {term(), :counters.counters_ref()}
  def counters(probe), do: GenServer.call(probe, :counters)

  @doc false
  def stats_of(method, nil), do: %{method: method, reported: 0, setups_ended: 0}

  def stats_of(method, counters),
    do: %{
      method: method,
      reported: :counters.get(counters, @reported),
      setups_ended: :counters.get(counters, @setups_ended)
    }

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
  # The node basenames watched on `host` (the names a round asks about there).
  @spec basenames(t(), String.t()) :: [String.t()]
  def basenames(%__MODULE__{} = p, host),
    do: p.by_host |> Map.get(host, []) |> Enum.map(&p.watched[&1].basename) |> Enum.uniq()

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

  # A setup that has heard nothing from the peer's host yet: in its epmd lookup (erl_epmd) or in
  # a TCP connect (stuck_in_connect?/1), with no reply waiting in its mailbox. Like
  # stuck_in_connect?/1, it does not look at the initial call, which differs by distribution module.
  defp waiting?(pid) do
    case Process.info(pid, [:current_function, :message_queue_len]) do
      [current_function: {:erl_epmd, _, _}, message_queue_len: 0] -> true
      [current_function: _, message_queue_len: 0] -> stuck_in_connect?(pid)
      _ -> false
    end
  end

  # The owner of a pending `#connection{}` is, by construction, the process the distribution
  # module's `setup/5` returned: no need to know that module. Its initial call differs by module
  # (`{inet_tcp_dist, do_setup, 7}` under inet_tcp, `{erlang, apply, 2}` under inet_tls: a fun),
  # so only where it is blocked counts: in prim_inet's connect (connect0 on OTP 25, connect_cmd on
  # OTP 26+, seen on 27 and 29), whether that is its epmd query or its distribution connect.
  defp stuck_in_connect?(pid) when is_pid(pid) do
    case Process.info(pid, :current_function) do
      {:current_function, {:prim_inet, connect, _}} when connect in [:connect, :connect0, :connect_cmd] ->
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
      :counters.add(s.counters, @setups_ended, 1)
    end

    :ok
  end

  ## How peers are asked

  @doc """
  How this node's distribution finds peers, and so how the probe asks about them:

    * `{:epmd, port}` - OTP's `erl_epmd` with an epmd: each host's epmd is asked for its names (on
      `port`: the `-epmd_port` argument, which `erl` sets from `ERL_EPMD_PORT`, else `4369`)
    * `{:dist_port, module}` - no epmd to ask: `erl_epmd` with `-erl_epmd_port` (every node listens
      on that fixed port and nothing registers), or a custom `-epmd_module`. Each peer's port is
      asked of `module` as the distribution asks it (`address_please/3` when exported, else
      `port_please/3`), and a TCP connect to it, closed at once, tells whether the peer is back
  """
  @spec method() :: {:epmd, 1..65535} | {:dist_port, module()}
  def method do
    module = :net_kernel.epmd_module()

    if module == :erl_epmd and :erl_epmd.listen_port_please(~c"probe", ~c"localhost") == {:ok, 0},
      do: {:epmd, epmd_port()},
      else: {:dist_port, module}
  end

  @doc false
  # The port of epmd, as erl_epmd finds it: `-epmd_port` (erl sets it from ERL_EPMD_PORT), else
  # ERL_EPMD_PORT (a VM started without erl's launcher), else 4369.
  @spec epmd_port() :: 1..65535
  def epmd_port do
    with {:ok, [[port | _] | _]} <- :init.get_argument(:epmd_port),
         {port, ""} when port in 1..65535 <- Integer.parse(to_string(port)) do
      port
    else
      _ -> Cluster.Strategy.LocalEpmd.default_epmd_port()
    end
  end

  @doc false
  # One `{:dist_port, module}` round: for each `{host, [basename]}` of `targets`, the peers' ports
  # are asked of `module` and connected to, all hosts concurrently, within `deadline` ms in all.
  # Answers go to `owner` as the NIF's do (`{:libcluster_rs, tag, {:epmd_names, host, answer}}`,
  # then `{:libcluster_rs, tag, :done}`): `{:ok, names}` with the names whose port accepted, when
  # some port accepted or refused (the host is there); `{:error, _}` when none answered. Returns the
  # round's pid (linked to the caller).
  @spec dist_port_round(pid(), reference(), [{String.t(), [String.t()]}], module(), pos_integer()) :: pid()
  def dist_port_round(owner, tag, targets, module, deadline) do
    spawn_link(fn ->
      until = System.monotonic_time(:millisecond) + deadline

      workers =
        Map.new(targets, fn {host, names} ->
          {pid, ref} = spawn_monitor(fn -> exit({:answer, ask_host(host, names, module, until)}) end)
          {ref, {pid, host}}
        end)

      collect_round(owner, tag, workers, until)
    end)
  end

  defp collect_round(owner, tag, workers, _until) when map_size(workers) == 0,
    do: send(owner, {:libcluster_rs, tag, :done})

  defp collect_round(owner, tag, workers, until) do
    receive do
      {:DOWN, ref, :process, _pid, reason} when is_map_key(workers, ref) ->
        {{_pid, host}, workers} = Map.pop(workers, ref)

        answer =
          case reason do
            {:answer, answer} -> answer
            other -> {:error, {:crashed, inspect(other)}}
          end

        send(owner, {:libcluster_rs, tag, {:epmd_names, host, answer}})
        collect_round(owner, tag, workers, until)
    after
      max(until - System.monotonic_time(:millisecond), 0) ->
        for {ref, {pid, host}} <- workers do
          Process.demonitor(ref, [:flush])
          Process.exit(pid, :kill)
          send(owner, {:libcluster_rs, tag, {:epmd_names, host, {:error, {:timeout, "no answer"}}}})
        end

        send(owner, {:libcluster_rs, tag, :done})
    end
  end

  defp ask_host(host, names, module, until) do
    {:ok, ip} = :inet.parse_strict_address(to_charlist(host))
    family = if tuple_size(ip) == 8, do: :inet6, else: :inet

    ports = Enum.map(names, &{&1, dist_port(module, &1, ip, family, left(until))})

    answers =
      ports
      |> Enum.flat_map(fn {_name, port} -> if is_integer(port), do: [port], else: [] end)
      |> Enum.uniq()
      |> Map.new(fn port ->
        case :gen_tcp.connect(ip, port, [family, active: false], left(until)) do
          {:ok, socket} ->
            :gen_tcp.close(socket)
            {port, :open}

          {:error, :econnrefused} ->
            {port, :refused}

          {:error, reason} ->
            {port, {:error, reason}}
        end
      end)

    open = for {name, port} <- ports, Map.get(answers, port) == :open, do: name

    if Enum.any?(Map.values(answers), &(&1 in [:open, :refused])),
      do: {:ok, open},
      else: {:error, {:unreachable, "no distribution port of #{host} answered"}}
  end

  # The peer's distribution port, as the distribution would find it (inet_tcp_dist/inet_tls_dist
  # call `address_please/3` when the module exports it, then `port_please/3` unless the address
  # came with a port). Anything else (noport, an error, a raise) is `nil`: not asked this round.
  defp dist_port(module, name, ip, family, timeout) do
    name = to_charlist(name)

    address =
      if function_exported?(module, :address_please, 3),
        do: module.address_please(name, :inet.ntoa(ip), family),
        else: {:ok, ip}

    case address do
      {:ok, _ip, port, _version} when is_integer(port) ->
        port

      {:ok, _ip} ->
        case module.port_please(name, ip, timeout) do
          {:port, port, _version} when is_integer(port) -> port
          _ -> nil
        end

      _ ->
        nil
    end
  rescue
    _ -> nil
  catch
    _, _ -> nil
  end

  defp left(until), do: max(until - System.monotonic_time(:millisecond), 0)

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
      method: probe_method(opts),
      counters: :counters.new(2, []),
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

  # `:port` (an epmd port) or `:method` given, else what the distribution uses.
  defp probe_method(opts) do
    case {Keyword.fetch(opts, :port), Keyword.fetch(opts, :method)} do
      {{:ok, port}, _} -> {:epmd, port}
      {:error, {:ok, method}} -> method
      {:error, :error} -> method()
    end
  end

  @impl true
  def handle_call(:counters, _from, s), do: {:reply, {s.method, s.counters}, s}

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
          %{s | round: {tag, start_round(s, tag, hosts)}, rounds: s.rounds + 1}
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

  defp start_round(%{method: {:epmd, port}} = s, tag, hosts),
    do: LibclusterRs.Native.epmd_names_start(tag, hosts, port, s.deadline)

  defp start_round(%{method: {:dist_port, module}} = s, tag, hosts) do
    targets = Enum.map(hosts, &{&1, basenames(s.core, &1)})
    dist_port_round(self(), tag, targets, module, s.deadline)
  end

  defp report(_s, []), do: :ok

  defp report(s, nodes) do
    if s.topology do
      Cluster.Logger.debug(s.topology, "epmd probe: #{inspect(nodes)} reachable again, redialling now")
    end

    :counters.add(s.counters, @reported, length(nodes))
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
