defmodule LibclusterRs.Membership.Pace do
  @moduledoc false
  # The pacing of dials, pure: in what order a membership dials nodes it has never dialled, and
  # which queued nodes start now.
  #
  #   * first dials (a node without a backoff entry) go in ring order: the names sorted, starting
  #     with the first name after this node's own, so that N nodes starting together do not all
  #     dial the same peer first, and node i's first dials are not node i+1's (two nodes dialling
  #     each other at once collide in the distribution's simultaneous-connect arbitration)
  #   * at most `pace` dials hold a slot at once; a slot is freed when its dial ends, when
  #     its setup is seen waiting for a peer's host that has not answered (check/3: looked at
  #     first_check/0 ms after the dial starts, then at twice the time since it started, at most
  #     every @max_interval ms), or after `:pace_hold` ms: a dial that hangs on a dead peer holds
  #     back the next one for a few ms, and then goes on concurrently within its deadline, while a
  #     dial to a live peer that is slow to set up (a loaded cluster) keeps its slot
  #   * `pace: :auto` (the default) is auto_pace/0 slots when the setups can be seen (the topology
  #     connects with `:net_kernel.connect_node/1`), else no pacing: without seeing them, a dead
  #     peer would hold its slot for all of `:pace_hold`
  #   * retries are paced as first dials are: backoff spaces one peer's dials, but when a partition
  #     heals the heal probe makes every lost peer due at once, and a node redialling its 50 lost
  #     peers at once, on every node of a 100-node cluster, is the cold-start storm again. A retry
  #     to a peer that is still unreachable waits on its host, which frees its slot at once
  #   * a queued node that is connected by the time its turn comes (the peer dialled us, or
  #     `global` connected it transitively) is not dialled: libcluster's connect_nodes skips
  #     listed nodes too
  #
  # `max_concurrency` still bounds all attempts in flight, paced or not.

  # Slots of `pace: :auto`; when a paced dial's setup is first looked at, and the longest
  # interval between two looks (ms).
  @auto_pace 8
  @first_check 2
  @max_interval 500

  @doc "How many first dials hold a slot with `pace: :auto`."
  @spec auto_pace() :: pos_integer()
  def auto_pace, do: @auto_pace

  @doc "When, in ms after its start, the setup of a paced dial is first looked at (when it can be seen)."
  @spec first_check() :: pos_integer()
  def first_check, do: @first_check

  @doc """
  The effective `:pace`: `:auto` is auto_pace/0 when setups can be seen (`seen?`: the topology
  connects with `:net_kernel.connect_node/1`), else `:infinity`; other values stand.
  """
  @spec window(:auto | :infinity | pos_integer(), boolean()) :: :infinity | pos_integer()
  def window(:auto, true), do: @auto_pace
  def window(:auto, false), do: :infinity
  def window(pace, _seen?), do: pace

  @doc """
  What the slot of a paced first dial does at a check, `elapsed` ms after the dial started, with
  its setup at `stage` (`LibclusterRs.Membership.Probe.setup_stage/1`, or `nil` when setups cannot
  be seen): `:release` after `hold` ms, or at once when the setup is `:waiting` (nothing heard from
  the peer's host yet: dead peers stay there); else `{:keep, ms}` until the next check, which comes
  at twice `elapsed` (a dial that is slow to set up is looked at less and less often), at most
  #{@max_interval} ms later.
  """
  @spec check(:waiting | :answered | :none | nil, non_neg_integer(), pos_integer()) ::
          :release | {:keep, pos_integer()}
  def check(_stage, elapsed, hold) when elapsed >= hold, do: :release
  def check(:waiting, _elapsed, _hold), do: :release
  def check(nil, elapsed, hold), do: {:keep, hold - elapsed}

  def check(_stage, elapsed, hold),
    do: {:keep, elapsed |> max(@first_check) |> min(@max_interval) |> min(hold - elapsed)}

  @doc "`nodes` in ring order from `self`: sorted, the names after `self` first, then the rest."
  @spec ring(Enumerable.t(), node()) :: [node()]
  def ring(nodes, self) do
    {low, high} = nodes |> Enum.sort() |> Enum.split_with(&(&1 <= self))
    high ++ low
  end

  @doc """
  Which queued nodes start now. `free` attempts may start in all, `paced_free` of them holding a
  pacing slot (`:infinity` when pacing is off); nodes in `listed` are dropped from the queue. Returns
  `{starts, skipped, queue}`: `starts` are `{node, paced?}` in queue order, `skipped` the listed
  nodes dropped, `queue` what still waits, in its order.
  """
  @spec take([node()], MapSet.t(), non_neg_integer(), non_neg_integer() | :infinity) ::
          {[{node(), boolean()}], [node()], [node()]}
  def take(queue, listed, free, paced_free) do
    {starts, skipped, rest, _, _} =
      Enum.reduce(queue, {[], [], [], free, paced_free}, fn node, {starts, skipped, rest, free, paced} ->
        cond do
          MapSet.member?(listed, node) -> {starts, [node | skipped], rest, free, paced}
          free == 0 or paced == 0 -> {starts, skipped, [node | rest], free, paced}
          true -> {[{node, paced != :infinity} | starts], skipped, rest, free - 1, dec(paced)}
        end
      end)

    {Enum.reverse(starts), Enum.reverse(skipped), Enum.reverse(rest)}
  end

  defp dec(:infinity), do: :infinity
  defp dec(n), do: n - 1
end
