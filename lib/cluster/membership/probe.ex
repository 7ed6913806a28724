defmodule Cluster.Membership.Probe do
  @moduledoc """
  Shortens the backoff of peers that come back: while a membership has peers in backoff, their
  hosts' epmd is asked which node names it has registered, and a peer whose name appears again is
  handed back to the membership to be redialled at once.

  A membership owns one probe (a process linked to it, started unless `probe: false`, see
  `Cluster.Membership`). The membership tells the probe which nodes are backed off, with their
  failure counts (`watch/2`), after every change; the probe sends the membership
  `{:probe_reachable, nodes}`, and the membership makes those nodes due now. The probe never
  connects anything and never delays anything: it only ends waits early. Which nodes are
  connected, and whether, stays the membership's (and the connect MFA's) decision.

  ## What is asked, and how often

    * every `500` ms, and only while there are backed-off peers, one EPMD `NAMES` query per
      distinct host (several peers on one host share it), each with a deadline of `400` ms, through
      the NIF (`Cluster.Native.epmd_names_start/4`): no scheduler and no `net_kernel` call waits for
      it. A round starts only once the previous one has ended
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

  ## Custom connect MFAs

  The probe runs for any connect MFA: it only moves a retry that the membership would make anyway
  earlier, so a custom connect still decides what connecting means. It helps when the connect uses
  Erlang distribution with epmd (the default `:net_kernel.connect_node/1`, or a wrapper around it).
  Where nodes do not register in epmd (an `-epmd_module` without epmd, or a connect that does not
  use distribution), peers are never reported and the probe costs one refused or unanswered query
  per host every 500 ms while peers are backed off; `probe: false` turns it off.
  """
  use GenServer

  @interval 500
  @deadline 400

  @typedoc "A backed-off node and its failure count."
  @type watched :: %{node() => non_neg_integer()}

  defstruct watched: %{}, in_flight: false, resolve: nil

  @type t :: %__MODULE__{}

  ## API

  @doc """
  Starts a probe that reports to `owner` (default: the caller), linked to the caller.

  Options: `:topology` (for log lines), `:interval` and `:deadline` in ms (defaults `500` and
  `400`), `:port` (the epmd port; default `ERL_EPMD_PORT` or `4369`), `:owner`.
  """
  @spec start_link(Keyword.t()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    opts = Keyword.put_new(opts, :owner, self())
    GenServer.start_link(__MODULE__, opts)
  end

  @doc """
  Sets the backed-off nodes to probe, with their failure counts. Nodes not in `watched` stop being
  probed. A `nil` probe (probing disabled) is accepted and ignored.
  """
  @spec watch(pid() | nil, watched()) :: :ok
  def watch(nil, _watched), do: :ok
  def watch(probe, watched) when is_map(watched), do: GenServer.cast(probe, {:watch, watched})

  ## Pure core: decisions as functions of state, host answers and the local hosts table

  @doc false
  @spec new((String.t() -> String.t() | nil)) :: t()
  def new(resolve \\ &local_address/1), do: %__MODULE__{resolve: resolve}

  @doc false
  # Takes the membership's backed-off set. New nodes get their host resolved once (locally only);
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

    %{p | watched: entries}
  end

  @doc false
  # The addresses to ask in one round: one per distinct host.
  @spec hosts(t()) :: [String.t()]
  def hosts(%__MODULE__{} = p) do
    p.watched |> Map.values() |> Enum.map(& &1.host) |> Enum.reject(&is_nil/1) |> Enum.uniq()
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

    {reports, returned?, watched} =
      Enum.reduce(p.watched, {[], false, p.watched}, fn
        {node, %{host: ^host} = entry}, {reports, returned?, acc} ->
          case observe(entry, MapSet.member?(names, entry.basename)) do
            {:edge, entry} -> {[node | reports], true, Map.put(acc, node, entry)}
            {:followup, entry} -> {[node | reports], returned?, Map.put(acc, node, entry)}
            {:quiet, entry} -> {reports, returned?, Map.put(acc, node, entry)}
          end

        _other, acc ->
          acc
      end)

    p = %{p | watched: watched}

    if returned? do
      {blind, p} = unprobed_due(p)
      {Enum.sort(reports ++ blind), p}
    else
      {Enum.sort(reports), p}
    end
  end

  @doc false
  @spec forget(t(), node()) :: t()
  def forget(%__MODULE__{} = p, node), do: %{p | watched: Map.delete(p.watched, node)}

  # `seen` is what the last answer said: :unknown (none since the streak began), :absent, :present.
  defp new_entry(node, resolve) do
    [basename, host] = node |> Atom.to_string() |> String.split("@", parts: 2) |> pad_host()

    %{
      basename: basename,
      host: host && resolve.(host),
      failures: 0,
      seen: :unknown,
      reported: nil,
      followup: false
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

  ## Server

  @impl true
  def init(opts) do
    interval = Keyword.get(opts, :interval, @interval)

    state = %{
      owner: Keyword.fetch!(opts, :owner),
      topology: Keyword.get(opts, :topology),
      interval: interval,
      deadline: Keyword.get(opts, :deadline, min(@deadline, interval)),
      port: Keyword.get_lazy(opts, :port, &Cluster.Strategy.LocalEpmd.default_epmd_port/0),
      core: new(Keyword.get(opts, :resolve, &local_address/1)),
      timer: nil,
      round: nil
    }

    :ok = :net_kernel.monitor_nodes(true)
    {:ok, state}
  end

  @impl true
  def handle_cast({:watch, watched}, s) do
    {:noreply, schedule(%{s | core: put_watched(s.core, watched)})}
  end

  @impl true
  def handle_info(:tick, s) do
    s = %{s | timer: nil}

    s =
      case {s.round, hosts(s.core)} do
        # The previous round is still out (a loaded machine): skip this tick.
        {{_tag, _handle}, _} ->
          s

        {nil, []} ->
          s

        {nil, hosts} ->
          tag = make_ref()
          handle = Cluster.Native.epmd_names_start(tag, hosts, s.port, s.deadline)
          %{s | round: {tag, handle}}
      end

    {:noreply, schedule(s)}
  end

  def handle_info({:libcluster_rs, tag, event}, %{round: {tag, _handle}} = s) do
    case event do
      {:epmd_names, host, result} ->
        {reports, core} = answer(s.core, host, result)
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
