defmodule LibclusterRs.Test.FakeEpmd do
  @moduledoc false
  # An epmd on 127.0.0.1 and a free port that answers NAMES_REQ (<<0, 1, ?n>>) like the real one
  # (`<<epmd_port::32>>` then `name <name> at port <port>\n` lines) with the names the test sets,
  # and counts the queries it answered. Any other request is closed without an answer, as epmd does
  # for requests it does not know. Stopped with the test process that started it.

  use Agent

  defstruct [:agent, :port]

  def start(names \\ []) do
    {:ok, agent} = Agent.start_link(fn -> %{names: names, queries: 0} end)
    {:ok, listen} = :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, reuseaddr: true])
    {:ok, port} = :inet.port(listen)
    acceptor = spawn_link(fn -> accept(listen, agent) end)
    :ok = :gen_tcp.controlling_process(listen, acceptor)
    %__MODULE__{agent: agent, port: port}
  end

  def set_names(%__MODULE__{agent: a}, names), do: Agent.update(a, &%{&1 | names: names})
  def queries(%__MODULE__{agent: a}), do: Agent.get(a, & &1.queries)

  defp accept(listen, agent) do
    {:ok, sock} = :gen_tcp.accept(listen)

    case :gen_tcp.recv(sock, 3, 2_000) do
      {:ok, <<0, 1, ?n>>} ->
        names = Agent.get_and_update(agent, &{&1.names, %{&1 | queries: &1.queries + 1}})
        lines = for {name, i} <- Enum.with_index(names), do: "name #{name} at port #{20_000 + i}\n"
        :gen_tcp.send(sock, [<<4369::32>> | lines])

      _ ->
        :ok
    end

    :gen_tcp.close(sock)
    accept(listen, agent)
  end
end
