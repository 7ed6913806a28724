defmodule Mix.Tasks.Libcluster.Mesh do
  @shortdoc "Checks that a running cluster is a full mesh and names the missing links"

  @moduledoc """
  Joins a running cluster as a hidden node (so it never becomes part of the mesh it checks), asks
  every node for its own view of the cluster, and prints the links that are missing
  (`Cluster.mesh/1` does the same from inside a node).

      $ mix libcluster.mesh --node app@10.0.0.1 --cookie "$RELEASE_COOKIE"
      8 nodes, asked in 12 ms
      missing links (2):
        app@10.0.0.3 does not see app@10.0.0.7 (app@10.0.0.7 sees app@10.0.0.3: one-sided)
        app@10.0.0.4 does not see app@10.0.0.7
      did not answer (1):
        app@10.0.0.9: timeout

  It exits with status 0 for a full mesh, 1 when a link is missing or a node did not answer, and
  2 when the cluster could not be reached at all. Nothing of libcluster_rs needs to run on the
  nodes asked.

  ## Options

    * `--node NODE` - a node of the cluster (required unless this VM is already connected)
    * `--cookie COOKIE` - the cluster's cookie (default: this VM's, e.g. `~/.erlang.cookie`)
    * `--name NAME` / `--sname NAME` - this checker's node name (default: a random
      `libcluster_mesh_<n>` on the host part of `--node`, long or short names to match it)
    * `--timeout MS` - per question, default `5000`
    * `--max-nodes N` - ask at most this many nodes, default `1000`
  """
  use Mix.Task

  @switches [
    node: :string,
    cookie: :string,
    name: :string,
    sname: :string,
    timeout: :integer,
    max_nodes: :integer
  ]

  @impl true
  def run(argv) do
    case report(argv) do
      {0, text} -> Mix.shell().info(text)
      {status, text} -> Mix.shell().info(text) && exit({:shutdown, status})
    end
  end

  @doc false
  # {exit status, text}; the work of `run/1`, without exiting (tests call it).
  def report(argv) do
    {opts, rest, invalid} = OptionParser.parse(argv, strict: @switches)

    if rest != [] or invalid != [] do
      raise ArgumentError,
            "unexpected arguments #{inspect(rest ++ Enum.map(invalid, &elem(&1, 0)))}; see `mix help libcluster.mesh`"
    end

    seed = if opts[:node], do: String.to_atom(opts[:node])
    :ok = ensure_distributed(seed, opts)
    if opts[:cookie], do: Node.set_cookie(String.to_atom(opts[:cookie]))
    check_opts = [timeout: opts[:timeout] || 5_000, max_nodes: opts[:max_nodes] || 1_000]

    cond do
      seed == nil and Node.list() == [] ->
        {2, "not connected to any node: give --node NODE (and --cookie COOKIE)"}

      seed != nil and not Node.connect(seed) ->
        {2, "cannot connect to #{seed} (is it running, and is the cookie right?)"}

      true ->
        t0 = System.monotonic_time(:millisecond)
        seeds = if seed, do: [seed], else: Node.list()
        mesh = LibclusterRs.Mesh.check([seeds: seeds] ++ check_opts)
        {if(mesh.full_mesh, do: 0, else: 1), format(mesh, System.monotonic_time(:millisecond) - t0)}
    end
  end

  defp ensure_distributed(seed, opts) do
    if Node.alive?() do
      :ok
    else
      {name, mode} =
        cond do
          opts[:name] -> {opts[:name], :longnames}
          opts[:sname] -> {opts[:sname], :shortnames}
          seed -> default_name(seed)
          true -> {nil, nil}
        end

      if name do
        # hidden: the checker never becomes part of the mesh, and `global` ignores it
        case :net_kernel.start(String.to_atom(name), %{name_domain: mode, hidden: true}) do
          {:ok, _} -> :ok
          {:error, reason} -> raise ArgumentError, "cannot start distribution as #{name}: #{inspect(reason)}"
        end
      end

      :ok
    end
  end

  defp default_name(seed) do
    host = seed |> Atom.to_string() |> String.split("@", parts: 2) |> List.last()
    name = "libcluster_mesh_#{System.unique_integer([:positive])}"

    if String.contains?(host, "."),
      do: {"#{name}@#{checker_host(host)}", :longnames},
      else: {name, :shortnames}
  end

  # An IP host: reach it from 127.0.0.1 if it is local, else let net_kernel pick this host's name.
  defp checker_host(host) do
    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> "127.0.0.1"
      _ -> local_host()
    end
  end

  defp local_host do
    {:ok, name} = :inet.gethostname()

    case :inet.gethostbyname(name) do
      {:ok, {:hostent, fqdn, _, _, _, _}} ->
        if(String.contains?(to_string(fqdn), "."), do: to_string(fqdn), else: "127.0.0.1")

      _ ->
        "127.0.0.1"
    end
  end

  @doc false
  def format(mesh, ms) do
    head =
      "#{length(mesh.nodes)} nodes, asked in #{ms} ms#{if mesh.truncated, do: " (stopped at --max-nodes)"}"

    missing =
      case mesh.missing do
        [] ->
          []

        links ->
          ["missing links (#{length(links)}):"] ++
            for {a, b} <- links do
              "  #{a} does not see #{b}" <>
                if({a, b} in mesh.asymmetric, do: " (#{b} sees #{a}: one-sided)", else: "")
            end
      end

    unreachable =
      case Enum.sort(mesh.unreachable) do
        [] ->
          []

        nodes ->
          ["did not answer (#{length(nodes)}):"] ++ for({n, why} <- nodes, do: "  #{n}: #{inspect(why)}")
      end

    verdict = if mesh.full_mesh, do: ["full mesh"], else: []
    Enum.join([head] ++ missing ++ unreachable ++ verdict, "\n")
  end
end
