defmodule LibclusterRs.NameWatcherTest do
  # The one watcher of this VM's node name (gossip and Postgres use it).
  use ExUnit.Case, async: true

  alias LibclusterRs.NameWatcher

  test "calls on_name with the context when the name differs from the one followed; :stop ends it" do
    test = self()

    w =
      NameWatcher.start(%{
        on_name: fn ctx, name ->
          send(test, {:named, ctx, name})
          if ctx == :last, do: :stop
        end
      })

    ref = Process.monitor(w)
    current = NameWatcher.current()

    # told the VM's own name: nothing to say
    NameWatcher.follow(w, :same, current)
    # told another name (a task started under a name the VM no longer has): called with the real one
    NameWatcher.follow(w, :first, "someone@else.example")
    assert_receive {:named, :first, ^current}, 2_000
    refute_received {:named, :same, _}

    NameWatcher.follow(w, :last, "again@else.example")
    assert_receive {:named, :last, ^current}, 2_000
    assert_receive {:DOWN, ^ref, :process, ^w, _}, 2_000
  end
end
