defmodule Cluster.Logger do
  @moduledoc """
  Logging with libcluster's format: every message is prefixed `[libcluster:<topology>] `.

  `debug/2` logs only when debug logging is enabled, checked at every call so that it can be
  switched on in a running system:

      config :libcluster, debug: true

  (`config :libcluster_rs, debug: true` works too.)
  """
  require Logger

  @spec debug(atom(), String.t()) :: :ok
  def debug(topology, message) do
    if debug_enabled?() do
      Logger.debug(fn -> prefix(topology, message) end)
    end

    :ok
  end

  @spec info(atom(), String.t()) :: :ok
  def info(topology, message), do: Logger.info(fn -> prefix(topology, message) end)

  @spec warn(atom(), String.t()) :: :ok
  def warn(topology, message), do: Logger.warning(fn -> prefix(topology, message) end)

  @spec error(atom(), String.t()) :: :ok
  def error(topology, message), do: Logger.error(fn -> prefix(topology, message) end)

  defp debug_enabled? do
    Application.get_env(:libcluster, :debug, false) || Application.get_env(:libcluster_rs, :debug, false)
  end

  defp prefix(topology, message), do: "[libcluster:#{topology}] #{message}"
end
