defmodule LibclusterRs.Test.DiscoverRun do
  @moduledoc false
  # Running `mix libcluster.discover` in tests: the task runs in a process of its own (the owner of
  # the discovery), its stdout and stderr are captured, and the topologies config is restored after.
  import ExUnit.CaptureIO

  alias Mix.Tasks.Libcluster.Discover

  @doc "Saves both apps' `:topologies` and restores them when the test exits; clears `:libcluster_rs`'s."
  def isolate_topologies do
    saved = for app <- [:libcluster, :libcluster_rs], do: {app, Application.get_env(app, :topologies)}

    ExUnit.Callbacks.on_exit(fn ->
      for {app, value} <- saved do
        if value,
          do: Application.put_env(app, :topologies, value),
          else: Application.delete_env(app, :topologies)
      end
    end)

    Application.delete_env(:libcluster_rs, :topologies)
    :ok
  end

  @doc """
  Sets `config :libcluster, topologies: topologies` for the task, after checking every MFA in them
  (LibclusterRs.Test.MFA): a dry-run test passes a recording connect MFA to show that nothing is
  connected, and one that does not exist would make that check unable to fail.
  """
  def configure!(topologies) do
    Application.put_env(:libcluster, :topologies, LibclusterRs.Test.MFA.check_topologies!(topologies))
  end

  @doc """
  Runs the task with `args`; `during` is called with the task while it runs. Returns
  `{exit_status, stdout <> stderr, elapsed_ms}`.
  """
  def run(args, during \\ fn _ -> :ok end) do
    parent = self()

    stderr =
      capture_io(:stderr, fn ->
        stdout =
          capture_io(fn ->
            started = System.monotonic_time(:millisecond)

            task =
              Task.async(fn ->
                try do
                  Discover.run(args)
                  0
                catch
                  :exit, {:shutdown, status} -> status
                end
              end)

            during.(task)
            status = Task.await(task, 15_000)
            send(parent, {:status, status, System.monotonic_time(:millisecond) - started})
          end)

        send(parent, {:stdout, stdout})
      end)

    status = receive(do: ({:status, status, ms} -> {status, ms}))
    stdout = receive(do: ({:stdout, stdout} -> stdout))
    {elem(status, 0), stdout <> stderr, elem(status, 1)}
  end
end
