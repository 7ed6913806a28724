defmodule Cluster.Telemetry do
  # `:telemetry` is optional: events are emitted only when it is loaded. The one list of events is
  # docs/telemetry.md, included here.
  @external_resource Path.expand("../../docs/telemetry.md", __DIR__)
  @moduledoc File.read!(Path.expand("../../docs/telemetry.md", __DIR__))
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
