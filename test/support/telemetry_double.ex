# A test-only stand-in for :telemetry (attach/4, attach_many/4, detach/1, execute/3,
# list_handlers/1), compiled only when the real library is not available. Handlers run in the
# emitting process, as with :telemetry; a handler that raises is detached.
unless Code.ensure_loaded?(:telemetry) do
  defmodule :telemetry do
    @moduledoc false
    @key {__MODULE__, :handlers}

    def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

    def attach_many(id, events, fun, config) when is_function(fun, 4) do
      locked(fn ->
        handlers = handlers()

        if Enum.any?(handlers, &(&1.id == id)) do
          {:error, :already_exists}
        else
          put([%{id: id, event_names: events, function: fun, config: config} | handlers])
        end
      end)
    end

    def detach(id) do
      locked(fn ->
        handlers = handlers()

        if Enum.any?(handlers, &(&1.id == id)),
          do: put(Enum.reject(handlers, &(&1.id == id))),
          else: {:error, :not_found}
      end)
    end

    def list_handlers(prefix) do
      for h <- handlers(),
          name <- h.event_names,
          List.starts_with?(name, prefix),
          do: Map.put(h, :event_name, name)
    end

    def execute(event, measurements, metadata) do
      for h <- handlers(), event in h.event_names do
        try do
          h.function.(event, measurements, metadata, h.config)
        rescue
          _ -> detach(h.id)
        end
      end

      :ok
    end

    defp handlers, do: :persistent_term.get(@key, [])

    defp put(handlers) do
      :persistent_term.put(@key, handlers)
      :ok
    end

    defp locked(fun), do: :global.trans({@key, self()}, fun, [node()])
  end
end
