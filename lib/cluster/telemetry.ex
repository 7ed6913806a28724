defmodule Cluster.Telemetry do
  @moduledoc false
  # `:telemetry` is optional: events are emitted only when it is loaded.
  @compile {:no_warn_undefined, :telemetry}

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if available?() do
      :telemetry.execute(event, measurements, metadata)
    end

    :ok
  end

  @spec available?() :: boolean()
  def available? do
    Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
  end
end
