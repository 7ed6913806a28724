defmodule LibclusterRs.NodeName do
  @moduledoc false
  # The only place where names from discovery become atoms (names from untrusted sources within the
  # VM-wide budget: `untrusted_to_node/3`). Which names are valid is decided by
  # the Rust core (`native/core/src/node_name.rs`, through `LibclusterRs.Native.node_names_check/1`),
  # the one validator both sides use: `name@host`, at most 255 bytes, the name of ASCII letters,
  # digits, `_`, `-`, `.`, the host an IP address or a hostname, no `..`, no trailing dot. Anything
  # else is rejected without creating an atom. Both sides are tested against
  # `test/fixtures/node_names.txt`.

  require Logger

  @chunk 1_000

  @doc "Whether the binary `name` is a valid node name."
  @spec valid?(term()) :: boolean()
  def valid?(name) when is_binary(name) do
    match?({[_], []}, LibclusterRs.Native.node_names_check([name]))
  end

  def valid?(_), do: false

  @doc "The node atom for `name`, or `:error` when `name` is not a valid node name."
  @spec to_node(term()) :: {:ok, node()} | :error
  def to_node(name) do
    case to_nodes([name]) do
      {[node], []} -> {:ok, node}
      {[], [_]} -> :error
    end
  end

  @doc """
  Node atoms for the valid names; returns `{nodes, rejected_names}`, both in the input's order.
  Rejected names (they come from the network) are logged here at debug level, with their count;
  callers may count them further from `rejected_names`.
  """
  @spec to_nodes([term()]) :: {[node()], [term()]}
  def to_nodes(names) when is_list(names) do
    {ok, bad} =
      names
      |> Stream.chunk_every(@chunk)
      |> Enum.reduce({[], []}, fn chunk, {ok, bad} ->
        {valid, rejected} = LibclusterRs.Native.node_names_check(chunk)
        {[valid | ok], [rejected | bad]}
      end)

    nodes = ok |> Enum.reverse() |> Enum.concat() |> Enum.map(&atom/1)
    rejected = bad |> Enum.reverse() |> Enum.concat()
    if rejected != [], do: log_rejected(rejected)
    {nodes, rejected}
  end

  defp log_rejected(rejected) do
    Logger.debug(fn ->
      shown = rejected |> Enum.take(5) |> Enum.map_join(", ", &inspect(&1, limit: 5, printable_limit: 80))
      "libcluster_rs: dropped #{length(rejected)} invalid node name(s) from discovery: #{shown}"
    end)
  end

  @doc """
  The node atom for `name` heard from an untrusted source (gossip v1 heartbeats, Postgres NOTIFY
  payloads). A name that is already an atom (a known node) is free; a new one spends one atom of the
  VM-wide budget for untrusted names, whose cap is `cap` (the strategy's `max_unauthenticated_atoms`
  or `max_new_atoms`). With `trusted: true` (an authenticated gossip datagram) the budget is not
  used. Returns `{:ok, node}`, `:invalid`, or `:full` at the cap (`:full_first` the first time this
  VM drops a name there: the caller logs that once, as an error).
  """
  @spec untrusted_to_node(term(), non_neg_integer(), boolean()) ::
          {:ok, node()} | :invalid | :full | :full_first
  def untrusted_to_node(name, cap, trusted \\ false) do
    cond do
      not valid?(name) ->
        :invalid

      existing = existing_atom(name) ->
        {:ok, existing}

      trusted ->
        {:ok, String.to_atom(name)}

      true ->
        case LibclusterRs.Native.untrusted_atom_reserve(cap) do
          :ok -> {:ok, String.to_atom(name)}
          full -> full
        end
    end
  end

  defp existing_atom(name) do
    String.to_existing_atom(name)
  rescue
    ArgumentError -> nil
  end

  defp atom(name) when is_atom(name), do: name
  defp atom(name), do: String.to_atom(name)

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
