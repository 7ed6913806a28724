defmodule LibclusterRs.Test.TelemetryForward do
  @moduledoc false
  # Forwards telemetry events to the calling test process as `{:telemetry, event, measurements,
  # meta}`, detached when the test exits. With `topology_prefix`, only events whose topology name
  # starts with it are forwarded, so test modules running at the same time do not see each other's.

  @spec attach([[atom()]], String.t() | nil) :: :ok
  def attach(events, topology_prefix \\ nil) do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      :telemetry.attach_many(
        id,
        events,
        fn event, measurements, meta, _ ->
          if topology_prefix == nil or String.starts_with?(to_string(meta[:topology]), topology_prefix),
            do: send(test, {:telemetry, event, measurements, meta})
        end,
        nil
      )

    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(id) end)
  end
end
