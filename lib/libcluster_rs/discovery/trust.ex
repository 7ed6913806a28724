defmodule LibclusterRs.Discovery.Trust do
  @moduledoc false
  # The rules by which a topology trusts what its discovery reports, the same for every strategy:
  #
  #   * an error never prunes; it is logged at warning level on the first failure of a streak
  #     (error level for a :config error: nothing connects until it is fixed), debug after that
  #   * an empty result after a non-empty one is applied only once `confirm_empty` consecutive
  #     rounds agree
  #
  # Pure: the discovery process acts on the answers.

  @doc """
  Whether a complete result `nodes` replaces the last known `last` set (`:apply`), or is held
  back as one more empty round in a streak (`{:hold, empty_streak}`).
  """
  @spec on_discovered(MapSet.t(), MapSet.t(), non_neg_integer(), pos_integer()) ::
          :apply | {:hold, pos_integer()}
  def on_discovered(nodes, last, empty_streak, confirm_empty) do
    if MapSet.size(nodes) == 0 and MapSet.size(last) > 0 and empty_streak + 1 < confirm_empty,
      do: {:hold, empty_streak + 1},
      else: :apply
  end

  @doc "The log level of a failed round, given the error streak before it and the error kind."
  @spec error_level(non_neg_integer(), atom()) :: :debug | :error | :warn
  def error_level(streak, _kind) when streak > 0, do: :debug
  def error_level(_streak, :config), do: :error
  def error_level(_streak, _kind), do: :warn
end
