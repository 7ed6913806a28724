defmodule LibclusterRs.Test.DiscoverRun do
  @moduledoc false
  # Running `mix libcluster.discover` in tests: the task runs in a process of its own (the owner of
  # the discovery), its stdout and stderr are captured, and it reads the topologies the test set
  # with `configure!/2`.
  #
  # The task reads `config :libcluster` / `config :libcluster_rs` (application env, global) and
  # writes to the shell (stderr, global), so every run holds one lock for the run's whole VM: the
  # env holds the test's topologies only while its run holds the lock, and is restored after.
  # Tests of async modules can run the task without seeing each other's config.
  #
  #   DiscoverRun.configure!(dns: [strategy: ..., config: ..., connect: MFA.recorder(self(), :connect)])
  #   {status, output, ms} = DiscoverRun.run(["dns", "--timeout", "3000"])
  import ExUnit.CaptureIO

  alias Mix.Tasks.Libcluster.Discover

  @apps [:libcluster, :libcluster_rs]

  @doc """
  The topologies the next runs of this test process see under `app`'s `:topologies` (the other
  app's are left empty unless set too), after checking every MFA in them (LibclusterRs.Test.MFA):
  a dry-run test passes a recording connect MFA to show that nothing is connected, and one that
  does not exist would make that check unable to fail. `configure!([])` clears them.
  """
  def configure!(topologies, app \\ :libcluster) when app in @apps do
    LibclusterRs.Test.MFA.check_topologies!(topologies)
    Process.put({__MODULE__, app}, topologies)
    :ok
  end

  @doc """
  Runs `fun` with the application env holding this test's topologies (`configure!/2`), under the
  lock every run takes; restores the env after.
  """
  def locked(fun) do
    LibclusterRs.Test.Lock.hold(__MODULE__, fn ->
      saved = for app <- @apps, do: {app, Application.fetch_env(app, :topologies)}

      try do
        for app <- @apps do
          case Process.get({__MODULE__, app}) do
            nil -> Application.delete_env(app, :topologies)
            topologies -> Application.put_env(app, :topologies, topologies)
          end
        end

        fun.()
      after
        for {app, value} <- saved do
          case value do
            {:ok, topologies} -> Application.put_env(app, :topologies, topologies)
            :error -> Application.delete_env(app, :topologies)
          end
        end
      end
    end)
  end

  @doc """
  Runs the task with `args`; `during` is called with the task while it runs. Returns
  `{exit_status, stdout <> stderr, elapsed_ms}`.
  """
  def run(args, during \\ fn _ -> :ok end) do
    locked(fn -> capture(args, during) end)
  end

  defp capture(args, during) do
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
