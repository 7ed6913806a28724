defmodule LibclusterRs.Membership.Faults do
  @moduledoc false
  # The failure streaks of a topology's MFAs (`:connect`, `:disconnect`, `:list_nodes`), pure: a
  # map `kind => %{mfa, error, count, total, at, failing}`, shown as `mfa_errors` in
  # `Cluster.status/1`. A streak starts at the first failure after a success (the membership logs
  # it once, at error level) and ends at the next success (logged at info level); the last error
  # stays visible with `failing: false`.

  @type kind :: :connect | :disconnect | :list_nodes
  @type t :: %{optional(kind) => map()}

  @doc """
  Records a failure of `kind`. Returns the new map and `{:started, entry}` when this failure
  starts a streak (to be logged), or `:continued`.
  """
  @spec fault(t(), kind(), String.t(), String.t(), integer()) :: {t(), {:started, map()} | :continued}
  def fault(faults, kind, mfa, error, now_ms) do
    case Map.fetch(faults, kind) do
      {:ok, %{failing: true} = e} ->
        e = %{e | error: error, count: e.count + 1, total: e.total + 1, at: now_ms}
        {Map.put(faults, kind, e), :continued}

      other ->
        total = with {:ok, e} <- other, do: e.total, else: (_ -> 0)
        e = %{mfa: mfa, error: error, count: 1, total: total + 1, at: now_ms, failing: true}
        {Map.put(faults, kind, e), {:started, e}}
    end
  end

  @doc "Records a success of `kind`: `{map, {:recovered, ended_streak}}` when a streak ends, else `{map, nil}`."
  @spec ok(t(), kind()) :: {t(), {:recovered, map()} | nil}
  def ok(faults, kind) do
    case Map.fetch(faults, kind) do
      {:ok, %{failing: true} = e} -> {Map.put(faults, kind, %{e | failing: false, count: 0}), {:recovered, e}}
      _ -> {faults, nil}
    end
  end

  @doc "How an MFA is named in logs and status: `Mod.fun/arity` as the library calls it."
  @spec mfa_text(kind(), mfa()) :: String.t()
  def mfa_text(kind, {mod, fun, args}) do
    # connect and disconnect get the node as an extra last argument.
    extra = if kind == :list_nodes, do: 0, else: 1
    "#{inspect(mod)}.#{fun}/#{length(args) + extra}"
  end
end
