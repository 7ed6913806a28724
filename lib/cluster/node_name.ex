defmodule Cluster.NodeName do
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

  @doc "The host part of a node name."
  @spec host(node() | String.t()) :: String.t()
  def host(node) do
    node |> to_string() |> String.split("@", parts: 2) |> List.last()
  end
end
