defmodule LibclusterRs.Membership.Peers do
  @moduledoc false
  # The dialer's per-node backoff state, the one place it lives: a map
  # `node => %{failures, next_at, last_error, last_dial_at, up_since, lost}` (monotonic ms;
  # `lost`: the node was up and went down, and has not been up since). Pure: the
  # clock (`now`) and the random draw (a float in [0, 1)) are arguments, so what the membership
  # does after a failure, a flap or a probe is tested without sleeps.
  #
  #   * a failure: the next dial is after the backoff delay (LibclusterRs.Backoff: `:backoff_min`
  #     doubling per failure up to `:backoff_max`, ±20 %), and never sooner than
  #     `:min_dial_interval` after the last dial
  #   * a node that drops within `:stable_after` of connecting is a failure (a flap); one that
  #     stayed longer has its failures forgotten
  #   * `reset/4` (the one function that clears a node's backoff) and `reachable/4` (the heal
  #     probe's: due now, failure count kept) both respect the `:min_dial_interval` floor

  alias LibclusterRs.Backoff

  @type peer :: %{
          failures: non_neg_integer(),
          next_at: integer(),
          last_error: term(),
          last_dial_at: integer() | nil,
          up_since: integer() | nil,
          lost: boolean()
        }
  @type t :: %{node() => peer()}

  @doc "A node never dialled: due at `now`."
  @spec new(integer()) :: peer()
  def new(now),
    do: %{failures: 0, next_at: now, last_error: nil, last_dial_at: nil, up_since: nil, lost: false}

  @doc "Whether `node` may be dialled at `now` (a node without an entry always may)."
  @spec due?(t(), node(), integer()) :: boolean()
  def due?(peers, node, now) do
    case Map.fetch(peers, node) do
      {:ok, %{next_at: at}} -> at <= now
      :error -> true
    end
  end

  @doc "Records a dial of `node` at `at`."
  @spec dialled(t(), node(), integer(), boolean()) :: t()
  def dialled(peers, node, at, create? \\ true) do
    case Map.fetch(peers, node) do
      {:ok, peer} -> Map.put(peers, node, %{peer | last_dial_at: at})
      :error when create? -> Map.put(peers, node, %{new(at) | last_dial_at: at})
      :error -> peers
    end
  end

  @doc """
  A failed attempt (or a flap) of `node` at `now` for `reason`. Returns the peers, the node's
  failure count and the delay until its next dial. `opts` has `:backoff_min`, `:backoff_max` and
  `:min_dial_interval`.
  """
  @spec fail(t(), node(), term(), integer(), map(), float()) :: {t(), pos_integer(), non_neg_integer()}
  def fail(peers, node, reason, now, opts, random) do
    peer = Map.get(peers, node) || new(now)
    failures = peer.failures + 1
    floor_at = (peer.last_dial_at || now) + opts.min_dial_interval
    next_at = max(now + Backoff.delay(failures, opts.backoff_min, opts.backoff_max, random), floor_at)
    peer = %{peer | failures: failures, next_at: next_at, last_error: reason, up_since: nil}
    {Map.put(peers, node, peer), failures, next_at - now}
  end

  @doc "A successful connect of `node` at `now`; returns whether it was down when the dial started."
  @spec connected(t(), node(), integer()) :: {t(), boolean()}
  def connected(peers, node, now) do
    peer = Map.get(peers, node) || new(now)
    newly? = peer.up_since == nil or peer.up_since >= peer.last_dial_at
    {Map.put(peers, node, %{peer | up_since: peer.up_since || now, lost: false}), newly?}
  end

  @doc """
  A nodeup of `node`: up since `now` unless already up (its failures are kept until stable). A
  node this one never dialled (it dialled us, or `global` connected it) gets an entry too: when
  it is lost, it is then known as lost (and watched by the heal probe from its first redial), not
  taken for a node never connected.
  """
  @spec up(t(), node(), integer()) :: t()
  def up(peers, node, now) do
    case Map.fetch(peers, node) do
      {:ok, %{up_since: nil} = peer} -> Map.put(peers, node, %{peer | up_since: now, lost: false})
      {:ok, _up} -> peers
      :error -> Map.put(peers, node, %{new(now) | up_since: now})
    end
  end

  @doc """
  Up/down transitions from a `list_nodes` answer (`listed`). Returns the peers and the nodes that
  flapped (dropped within `stable_after` of connecting): the caller fails them with `fail/6`.
  """
  @spec observe(t(), MapSet.t(), integer(), map()) :: {t(), [node()]}
  def observe(peers, listed, now, opts) do
    Enum.reduce(peers, {peers, []}, fn {node, peer}, {acc, flapped} ->
      listed? = MapSet.member?(listed, node)

      cond do
        listed? and peer.up_since == nil ->
          {Map.put(acc, node, %{peer | up_since: now, lost: false}), flapped}

        not listed? and peer.up_since != nil and now - peer.up_since < opts.stable_after ->
          {acc, [node | flapped]}

        not listed? and peer.up_since != nil ->
          floor_at = (peer.last_dial_at || now) + opts.min_dial_interval

          {Map.put(acc, node, %{
             peer
             | failures: 0,
               last_error: nil,
               up_since: nil,
               lost: true,
               next_at: max(now, floor_at)
           }), flapped}

        true ->
          {acc, flapped}
      end
    end)
    |> then(fn {acc, flapped} -> {acc, Enum.reverse(flapped)} end)
  end

  @doc "The heal probe saw `nodes` again: due now (not before the dial floor), failure counts kept."
  @spec reachable(t(), [node()], integer(), pos_integer()) :: t()
  def reachable(peers, nodes, now, min_dial_interval) do
    Enum.reduce(nodes, peers, fn node, peers ->
      case peers do
        %{^node => peer} ->
          floor_at = (peer.last_dial_at || now) + min_dial_interval
          Map.put(peers, node, %{peer | next_at: max(now, floor_at)})

        _ ->
          peers
      end
    end)
  end

  @doc """
  The set the heal probe watches: desired nodes that are down and either failed (with backoff), or
  are being dialled (`busy`) and were lost (up, then down: the first redial after a nodedown may
  hang for seconds in a partition) or have a dial seen waiting for a host that does not answer
  (`waiting`), with their failure counts. A node on its way to its first connection whose setup
  progresses is not watched: watching every first dial made every node of a cluster that starts
  together ask every other host's epmd twice a second while it formed (at 50 nodes about a
  quarter of the formation time, docs/scale.md).
  """
  @spec backed_off(t(), MapSet.t(), MapSet.t(), MapSet.t()) :: %{node() => non_neg_integer()}
  def backed_off(peers, desired, busy, waiting \\ MapSet.new()) do
    for {node, peer} <- peers,
        MapSet.member?(desired, node),
        peer.up_since == nil,
        peer.failures > 0 or
          (MapSet.member?(busy, node) and (peer.lost or MapSet.member?(waiting, node))),
        into: %{},
        do: {node, peer.failures}
  end

  @doc "When the next desired node that is neither connected nor being dialled is due, or nil."
  @spec next_due(t(), Enumerable.t(), MapSet.t(), MapSet.t(), integer()) :: integer() | nil
  def next_due(peers, desired, listed, busy, now) do
    # Called after every attempt: the set differences are map operations, so that only the few
    # nodes neither connected nor being dialled are walked. A node without a backoff entry is due
    # now (monotonic time may be negative: never default to 0).
    desired
    |> MapSet.new()
    |> MapSet.difference(listed)
    |> MapSet.difference(busy)
    |> Enum.reduce(nil, fn n, min ->
      at =
        case peers do
          %{^n => %{next_at: at}} -> at
          _ -> now
        end

      if min == nil or at < min, do: at, else: min
    end)
  end

  @doc "Beyond `cap` entries, drops those of nodes neither desired, up, backed off nor being dialled."
  @spec gc(t(), MapSet.t(), MapSet.t(), integer(), pos_integer()) :: t()
  def gc(peers, desired, busy, now, cap) when map_size(peers) > cap do
    for {n, p} <- peers,
        MapSet.member?(desired, n) or p.up_since != nil or p.next_at > now or MapSet.member?(busy, n),
        into: %{},
        do: {n, p}
  end

  def gc(peers, _desired, _busy, _now, _cap), do: peers
end
