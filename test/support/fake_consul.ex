defmodule LibclusterRs.Test.FakeConsul do
  @moduledoc false
  # A Consul agent's HTTP API for the endpoints Cluster.Strategy.Consul asks, on top of HttpFake
  # (plain or HTTPS with a TestCA, optionally requiring a client certificate), with Consul's
  # semantics where the strategy depends on them:
  #
  #   * blocking queries: `/v1/health/service/:name` and `/v1/catalog/service/:name` answer with
  #     `X-Consul-Index` (the index of the service's last change); with `?index=N` they hold the
  #     request until the index passes N or `wait` (`10s`, `5m`, `300ms`) expires, then answer
  #   * `?dc=` (an unknown datacenter is a 500 "No path to datacenter", as in Consul), `?passing`,
  #     and `?filter=` for the one form the tests use: `"<tag>" in Service.Tags`
  #   * the agent: `/v1/agent/service/:id`, `/v1/agent/health/service/name/:name` (200, 429 when an
  #     instance is warning, 503 when one is critical, 404 when there is none)
  #   * `/v1/catalog/datacenters`
  #   * ACLs (`acl: %{token => %{services: [name] | :all, nodes: boolean}}`): an unknown or missing
  #     token is a 403 "ACL not found"; the agent endpoints answer 403 "Permission denied" without
  #     service:read; Health and Catalog drop the entries the token may not read and say so in
  #     `X-Consul-Results-Filtered-By-ACLs: true`, as Consul does
  #
  #   consul = FakeConsul.start!(tls: ca, client_ca: ca.ca)
  #   FakeConsul.put(consul, "web", [FakeConsul.instance("n1", "10.0.0.1")], dc: "dc1")
  #   FakeConsul.set_index(consul, "web", 3)      # make the index go backwards
  #   FakeConsul.http(consul)                     # the HttpFake: requests/1, fault/3
  #
  # Faults (401, 403, 429 + Retry-After, 500, malformed, slow) are HttpFake's queued faults.

  use GenServer

  alias LibclusterRs.Test.{HttpFake, JSON}

  defstruct [:pid, :http, :url]

  def start!(opts \\ []) do
    {:ok, pid} = GenServer.start(__MODULE__, Keyword.take(opts, [:acl, :datacenters]))
    handler = fn req -> handle(pid, req) end
    http = HttpFake.start!(Keyword.drop(opts, [:acl, :datacenters]) ++ [handler: handler])
    %__MODULE__{pid: pid, http: http, url: HttpFake.url(http)}
  end

  def stop(%__MODULE__{pid: pid, http: http}) do
    HttpFake.stop(http)
    if Process.alive?(pid), do: GenServer.stop(pid)
    :ok
  end

  def http(%__MODULE__{http: http}), do: http
  def requests(%__MODULE__{http: http}), do: HttpFake.requests(http)

  @doc "An instance: node name, node address; opts `service_address:`, `status:`, `tags:`, `id:`."
  def instance(node, address, opts \\ []) do
    %{
      node: node,
      address: address,
      service_address: Keyword.get(opts, :service_address, ""),
      status: Keyword.get(opts, :status, "passing"),
      tags: Keyword.get(opts, :tags, []),
      id: Keyword.get(opts, :id)
    }
  end

  @doc "Replaces the instances of `service` (in `dc:`, default \"dc1\"); bumps its index."
  def put(%__MODULE__{pid: pid}, service, instances, opts \\ []),
    do: GenServer.call(pid, {:put, Keyword.get(opts, :dc, "dc1"), service, instances})

  @doc "Sets the index of `service` (e.g. lower, as after a snapshot restore) and wakes its waiters."
  def set_index(%__MODULE__{pid: pid}, service, index, opts \\ []),
    do: GenServer.call(pid, {:set_index, Keyword.get(opts, :dc, "dc1"), service, index})

  @doc "Requests being held (blocking) right now."
  def blocked(%__MODULE__{pid: pid}), do: GenServer.call(pid, :blocked)

  ## State

  @impl true
  def init(opts) do
    {:ok,
     %{
       services: %{},
       index: 10,
       waiters: %{},
       acl: Keyword.get(opts, :acl),
       datacenters: Keyword.get(opts, :datacenters, ["dc1"])
     }}
  end

  @impl true
  def handle_call({:put, dc, service, instances}, _from, s) do
    index = s.index + 1
    s = %{s | index: index, services: Map.put(s.services, {dc, service}, {index, instances})}
    {:reply, :ok, wake(s, {dc, service})}
  end

  def handle_call({:set_index, dc, service, index}, _from, s) do
    {_, instances} = Map.get(s.services, {dc, service}, {0, []})
    s = %{s | services: Map.put(s.services, {dc, service}, {index, instances})}
    {:reply, :ok, wake(s, {dc, service})}
  end

  def handle_call(:blocked, _from, s) do
    {:reply, s.waiters |> Map.values() |> List.flatten() |> Enum.count(&Process.alive?/1), s}
  end

  def handle_call(:config, _from, s), do: {:reply, {s.acl, s.datacenters}, s}

  # `{:read, key, index}`: the service now, or `:wait` (the caller is woken by `{:changed, key}`).
  def handle_call({:read, key, min_index}, {caller, _}, s) do
    {index, instances} = Map.get(s.services, key, {1, []})

    if min_index > 0 and index <= min_index do
      {:reply, :wait, %{s | waiters: Map.update(s.waiters, key, [caller], &[caller | &1])}}
    else
      {:reply, {index, instances}, s}
    end
  end

  def handle_call({:unwait, key}, {caller, _}, s) do
    {:reply, :ok, %{s | waiters: Map.update(s.waiters, key, [], &List.delete(&1, caller))}}
  end

  defp wake(s, key) do
    for pid <- Map.get(s.waiters, key, []), do: send(pid, {:fake_consul_changed, key})
    %{s | waiters: Map.delete(s.waiters, key)}
  end

  ## HTTP (runs in the connection's process, so a blocking query blocks only its connection)

  defp handle(pid, %{method: "GET"} = req) do
    {acl, datacenters} = GenServer.call(pid, :config)
    dc = req.query["dc"] || "dc1"
    token = req.headers["x-consul-token"]

    cond do
      acl != nil and not Map.has_key?(acl, token) ->
        {403, [], "ACL not found"}

      dc not in datacenters ->
        {500, [], "No path to datacenter"}

      true ->
        route(pid, String.split(req.path, "/", trim: true), req, dc, acl && acl[token])
    end
  end

  defp handle(_pid, _req), do: {405, [], "method not allowed"}

  defp route(pid, ["v1", "catalog", "datacenters"], _req, _dc, _grants) do
    {_acl, datacenters} = GenServer.call(pid, :config)
    json(200, [], datacenters)
  end

  defp route(pid, ["v1", "health", "service", name], req, dc, grants) do
    {index, instances} = blocking_read(pid, {dc, URI.decode(name)}, req)
    instances = if req.query["passing"] in ["true", "1", ""], do: passing(instances), else: instances
    {instances, filtered} = acl_filter(instances, URI.decode(name), grants)

    body =
      for i <- filter(instances, req.query["filter"]) do
        %{
          "Node" => %{"Node" => i.node, "Address" => i.address, "Datacenter" => dc},
          "Service" => %{
            "ID" => i.id || "#{name}-#{i.node}",
            "Service" => name,
            "Address" => i.service_address,
            "Tags" => i.tags,
            "Port" => 4000
          },
          "Checks" => [%{"CheckID" => "serfHealth", "Status" => i.status}]
        }
      end

    json(200, headers(index, filtered), body)
  end

  defp route(pid, ["v1", "catalog", "service", name], req, dc, grants) do
    {index, instances} = blocking_read(pid, {dc, URI.decode(name)}, req)
    {instances, filtered} = acl_filter(instances, URI.decode(name), grants)

    body =
      for i <- filter(instances, req.query["filter"]) do
        %{
          "Node" => i.node,
          "Address" => i.address,
          "Datacenter" => dc,
          "ServiceID" => i.id || "#{name}-#{i.node}",
          "ServiceName" => name,
          "ServiceAddress" => i.service_address,
          "ServiceTags" => i.tags
        }
      end

    json(200, headers(index, filtered), body)
  end

  defp route(pid, ["v1", "agent", "health", "service", "name", name], _req, dc, grants) do
    name = URI.decode(name)

    if grants != nil and not can_read?(grants, name) do
      {403, [], "Permission denied: token lacks permission 'service:read' on \"#{name}\""}
    else
      {_index, instances} = GenServer.call(pid, {:read, {dc, name}, 0})

      body =
        for i <- instances do
          %{
            "AggregatedStatus" => i.status,
            "Service" => %{
              "ID" => i.id || "#{name}-#{i.node}",
              "Service" => name,
              "Address" => i.service_address
            },
            "Checks" => []
          }
        end

      statuses = Enum.map(instances, & &1.status)

      code =
        cond do
          instances == [] -> 404
          "critical" in statuses -> 503
          "warning" in statuses -> 429
          true -> 200
        end

      if code == 404, do: {404, [], "ServiceName #{name} Not Found"}, else: json(code, [], body)
    end
  end

  defp route(pid, ["v1", "agent", "service", id], _req, dc, grants) do
    found =
      pid
      |> :sys.get_state()
      |> Map.fetch!(:services)
      |> Enum.find_value(fn {{sdc, name}, {_, instances}} ->
        sdc == dc && Enum.find_value(instances, &(&1.id == id && {name, &1}))
      end)

    case found do
      nil ->
        {404, [], "unknown service ID: #{id}"}

      {name, i} ->
        if grants != nil and not can_read?(grants, name),
          do: {403, [], "Permission denied: token lacks permission 'service:read' on \"#{name}\""},
          else:
            json(200, [], %{"ID" => id, "Service" => name, "Address" => i.service_address, "Port" => 4000})
    end
  end

  defp route(_pid, _path, _req, _dc, _grants), do: {404, [], "404 page not found"}

  # Holds the request while the service's index is not past `?index` (until `?wait`), as Consul does.
  defp blocking_read(pid, key, req) do
    min_index = String.to_integer(req.query["index"] || "0")
    deadline = System.monotonic_time(:millisecond) + wait_ms(req.query["wait"])
    read_until(pid, key, min_index, deadline)
  end

  defp read_until(pid, key, min_index, deadline) do
    case GenServer.call(pid, {:read, key, min_index}) do
      :wait ->
        left = deadline - System.monotonic_time(:millisecond)

        receive do
          {:fake_consul_changed, ^key} -> read_until(pid, key, min_index, deadline)
        after
          max(left, 0) ->
            GenServer.call(pid, {:unwait, key})
            GenServer.call(pid, {:read, key, 0})
        end

      answer ->
        answer
    end
  end

  defp wait_ms(nil), do: 300_000

  defp wait_ms(text) do
    case Integer.parse(text) do
      {n, "ms"} -> n
      {n, "s"} -> n * 1_000
      {n, "m"} -> n * 60_000
      {n, ""} -> n * 1_000
    end
  end

  defp passing(instances), do: Enum.filter(instances, &(&1.status == "passing"))

  defp filter(instances, nil), do: instances

  defp filter(instances, expression) do
    [_, tag] = Regex.run(~r/^"([^"]+)" in Service\.Tags$/, expression)
    Enum.filter(instances, &(tag in &1.tags))
  end

  defp acl_filter(instances, _name, nil), do: {instances, false}

  defp acl_filter(instances, name, grants) do
    kept = if can_read?(grants, name) and grants.nodes, do: instances, else: []
    {kept, length(kept) != length(instances)}
  end

  defp can_read?(%{services: :all}, _name), do: true
  defp can_read?(%{services: names}, name), do: name in names

  defp headers(index, filtered) do
    [{"x-consul-index", Integer.to_string(index)}] ++
      if filtered, do: [{"x-consul-results-filtered-by-acls", "true"}], else: []
  end

  defp json(code, headers, term),
    do: {code, [{"content-type", "application/json"} | headers], JSON.encode_binary(term)}
end
