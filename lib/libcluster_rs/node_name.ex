defmodule LibclusterRs.NodeName do
  @moduledoc false
  # The only place where names from discovery become atoms. A name must look like `name@host`
  # (ASCII letters, digits, `_`, `-`, `.` in the name; a hostname or an IP address as the host) and
  # be at most 255 bytes; anything else is rejected without creating an atom.

  @max 255
  @name ~r/\A[A-Za-z0-9_.\-]+@(?:[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)\z/

  @spec valid?(term()) :: boolean()
  def valid?(name) when is_binary(name) and byte_size(name) <= @max do
    Regex.match?(@name, name) and not String.contains?(name, "..")
  end

  def valid?(_), do: false

  @doc "The node atom for `name`, or `:error` when `name` is not a valid node name."
  @spec to_node(term()) :: {:ok, node()} | :error
  def to_node(name) when is_atom(name) and name != nil, do: to_node(Atom.to_string(name))

  def to_node(name) do
    if valid?(name), do: {:ok, String.to_atom(name)}, else: :error
  end

  @doc "Node atoms for the valid names; returns `{nodes, rejected_names}`."
  @spec to_nodes([term()]) :: {[node()], [term()]}
  def to_nodes(names) do
    Enum.reduce(names, {[], []}, fn name, {ok, bad} ->
      case to_node(name) do
        {:ok, node} -> {[node | ok], bad}
        :error -> {ok, [name | bad]}
      end
    end)
    |> then(fn {ok, bad} -> {Enum.reverse(ok), Enum.reverse(bad)} end)
  end

  @doc """
  Why `node` cannot be connected from a node using long names (`longnames? = true`, `--name`) or
  short names (`--sname`), as a sentence naming the node; `nil` when its name suits the mode.
  Erlang refuses to dial a host part without dots (that is not an IP address) under long names,
  and a host part with dots or an IP address under short names.
  """
  @spec mode_problem(node() | String.t(), boolean()) :: String.t() | nil
  def mode_problem(node, longnames?) do
    host = host(node)
    ip? = match?({:ok, _}, :inet.parse_strict_address(String.to_charlist(host)))
    dotted? = String.contains?(host, ".")

    cond do
      longnames? and not dotted? and not ip? ->
        "#{node}: its host part #{inspect(host)} is a short name, but this node uses long names " <>
          "(--name); use a fully qualified host or an IP address in the node names, or start every " <>
          "node with --sname"

      not longnames? and (dotted? or ip?) ->
        "#{node}: its host part #{inspect(host)} is a fully qualified name or an IP address, but this " <>
          "node uses short names (--sname); start every node with --name (RELEASE_DISTRIBUTION=name)"

      true ->
        nil
    end
  end

  @doc "The host part of a node name."
  @spec host(node() | String.t()) :: String.t()
  def host(node) do
    node |> to_string() |> String.split("@", parts: 2) |> List.last()
  end
end
