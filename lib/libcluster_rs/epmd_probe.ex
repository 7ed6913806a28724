defmodule LibclusterRs.EpmdProbe do
  @moduledoc false
  # What the epmd of each host says, for the dry run of the static topologies (Epmd, ErlangHosts,
  # LocalEpmd): every host is asked natively (the EPMD NAMES request, concurrently, each with its
  # own deadline), and the answers are compared with the nodes the topology lists. Nothing is
  # connected.

  alias LibclusterRs.NodeName

  @type answer :: {:ok, [String.t()]} | {:error, {atom(), String.t()}}

  @doc """
  Asks the epmd of every host in `hosts` (on `port`) for its node names; returns `%{host => answer}`
  with an entry for every host. A host with no answer within `timeout` ms is `{:error, {:timeout, _}}`.
  """
  @spec ask([String.t()], 1..65535, pos_integer()) :: %{String.t() => answer()}
  def ask([], _port, _timeout), do: %{}

  def ask(hosts, port, timeout) do
    hosts = Enum.uniq(hosts)
    tag = make_ref()
    handle = LibclusterRs.Native.epmd_names_start(tag, hosts, port, timeout)
    # The native side gives each host `timeout`; leave it a little more to report it.
    deadline = System.monotonic_time(:millisecond) + timeout + 1_000

    try do
      answers = collect(tag, %{}, deadline)

      Map.new(hosts, fn host ->
        {host,
         Map.get(
           answers,
           host,
           {:error, {:timeout, "epmd on #{host}:#{port} did not answer within #{timeout} ms"}}
         )}
      end)
    after
      LibclusterRs.Native.discovery_stop(handle)
    end
  end

  defp collect(tag, answers, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:libcluster_rs, ^tag, {:epmd_names, host, result}} ->
        collect(tag, Map.put(answers, host, result), deadline)

      {:libcluster_rs, ^tag, :done} ->
        answers
    after
      wait -> answers
    end
  end

  @doc """
  Compares `listed` nodes with the `answers` of their hosts' epmd:

    * `:registered` - listed nodes whose host's epmd lists their name
    * `:absent` - `{node, names}`: the host answered but does not list the node (`names` are the
      names it does list)
    * `:unanswered` - `{host, kind, message}`: hosts whose epmd could not be asked, and why
  """
  @spec compare([node()], %{String.t() => answer()}) :: %{
          registered: [node()],
          absent: [{node(), [String.t()]}],
          unanswered: [{String.t(), atom(), String.t()}]
        }
  def compare(listed, answers) do
    listed = Enum.uniq(listed)

    registered =
      for node <- listed,
          {:ok, names} <- [Map.get(answers, NodeName.host(node))],
          basename(node) in names,
          do: node

    absent =
      for node <- listed,
          {:ok, names} <- [Map.get(answers, NodeName.host(node))],
          basename(node) not in names,
          do: {node, names}

    unanswered =
      for {host, {:error, {kind, message}}} <- Enum.sort(answers), do: {host, kind, to_string(message)}

    %{registered: registered, absent: absent, unanswered: unanswered}
  end

  @doc "Every node the answers show, `name@host`, sorted."
  @spec nodes(%{String.t() => answer()}) :: [node()]
  def nodes(answers) do
    {nodes, _rejected} =
      answers
      |> Enum.flat_map(fn
        {host, {:ok, names}} -> Enum.map(names, &"#{&1}@#{host}")
        _ -> []
      end)
      |> NodeName.to_nodes()

    Enum.sort(nodes)
  end

  defp basename(node), do: node |> Atom.to_string() |> String.split("@", parts: 2) |> hd()
end
