defmodule LibclusterRs.Discovery.Diagnostics do
  @moduledoc false
  # Node names whose host part cannot work with this node's name mode (a host without dots under
  # long names, a qualified host or an IP under short names): at most 10 kept for status (a
  # complete discovery replaces them, sightings add to them), and a warning once per topology.
  # Pure: the name mode is an argument (nil when this node is not distributed: nothing to check).

  alias LibclusterRs.NodeName

  @shown 10

  defstruct problems: [], warned: false

  @type t :: %__MODULE__{problems: [String.t()], warned: boolean()}

  @doc """
  Checks `nodes` from a `:discovered` or `:seen` outcome under `longnames?`. Returns the new
  diagnostics and the warning to log, or nil.
  """
  @spec check(t(), Enumerable.t(), :discovered | :seen, boolean() | nil) :: {t(), String.t() | nil}
  def check(d, nodes, source, longnames?) do
    problems =
      if longnames? == nil do
        []
      else
        nodes
        |> Stream.map(&NodeName.mode_problem(&1, longnames?))
        |> Stream.reject(&is_nil/1)
        |> Enum.take(@shown)
      end

    warning =
      if problems != [] and not d.warned,
        do: "discovered node names that cannot be connected from this node, e.g. #{hd(problems)}"

    kept = if source == :seen, do: Enum.take(Enum.uniq(problems ++ d.problems), @shown), else: problems
    {%__MODULE__{problems: kept, warned: d.warned or kept != []}, warning}
  end
end
