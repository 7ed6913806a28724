defmodule LibclusterRs.Telemetry do
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

  # Only whether :telemetry is loaded: no code-path search per event (which costs milliseconds
  # when it is absent). A handler can only be attached through :telemetry, which loads it, so an
  # unloaded :telemetry has no handlers and skipping the event loses nothing.
  @spec available?() :: boolean()
  def available?, do: function_exported?(:telemetry, :execute, 3)
end
