defmodule LibclusterRs.NameWatcher do
  @moduledoc false
  # The one watcher of this VM's node name, for the strategies that listen for names from the
  # network (gossip, Postgres): a node may start without a name and get one later (`Node.start/2`),
  # or lose it (`Node.stop/0`). The watcher polls the name every 500 ms (the VM sends no event for
  # it) and calls `on_name.(context, name)` when it differs from the name last told (`nil`: not
  # distributed); `on_name` returning `:stop` ends the watcher. With `on_nodedown`, it also
  # subscribes to node events and calls `on_nodedown.(context, node)` for each node that goes down.
  #
  # It runs as a task of the topology's Task.Supervisor (LibclusterRs.Discovery.task_supervisor/0),
  # which is linked to the strategy process: it ends when the supervisor shuts it down with the
  # topology. (It neither links to nor watches the owner itself: dying by itself at the same moment
  # would make the supervisor report a shutdown error.) Outside a discovery (no task supervisor),
  # nothing is started and `start/1` returns `nil`.

  @poll 500

  @type context :: term()
  @type callbacks :: %{
          required(:on_name) => (context(), String.t() | nil -> term()),
          optional(:on_nodedown) => (context(), node() -> term())
        }

  @doc "Starts a watcher with `callbacks`; it does nothing until `follow/3` gives it a context."
  @spec start(callbacks()) :: pid() | nil
  def start(callbacks) do
    case LibclusterRs.Discovery.task_supervisor() do
      nil ->
        nil

      sup ->
        {:ok, pid} =
          Task.Supervisor.start_child(sup, fn ->
            Process.send_after(self(), :poll, @poll)
            monitoring = Map.has_key?(callbacks, :on_nodedown) and subscribe()
            loop(%{callbacks: callbacks, context: nil, node: nil, monitoring: monitoring})
          end)

        pid
    end
  end

  @doc """
  Gives the watcher the `context` its callbacks get (e.g. a new native task) and the name that
  context was started with: `on_name` is called when the VM's name differs from it.
  """
  @spec follow(pid() | nil, context(), String.t() | nil) :: :ok
  def follow(nil, _context, _node), do: :ok

  def follow(pid, context, node) do
    send(pid, {:follow, context, node})
    :ok
  end

  @doc "This VM's node name as a binary, `nil` when it is not distributed."
  @spec current() :: String.t() | nil
  def current, do: if(Node.alive?(), do: Atom.to_string(Node.self()), else: nil)

  defp loop(w) do
    receive do
      {:follow, context, node} ->
        loop(%{w | context: context, node: node})

      :poll ->
        node = current()

        if w.context != nil and node != w.node and w.callbacks.on_name.(w.context, node) == :stop do
          :ok
        else
          Process.send_after(self(), :poll, @poll)

          loop(%{
            w
            | node: node,
              monitoring: w.monitoring or (Map.has_key?(w.callbacks, :on_nodedown) and subscribe())
          })
        end

      {:nodedown, node} ->
        if w.context != nil, do: w.callbacks.on_nodedown.(w.context, node)
        loop(w)

      _other ->
        loop(w)
    end
  end

  # Subscribing fails while the VM is not distributed; the poll tries again.
  defp subscribe, do: :net_kernel.monitor_nodes(true) == :ok
end
