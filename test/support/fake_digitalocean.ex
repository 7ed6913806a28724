defmodule LibclusterRs.Test.FakeDigitalOcean do
  @moduledoc false
  # A fake DigitalOcean API (`GET /v2/droplets`) on top of HttpFake: HTTPS with a TestCA by
  # default, bearer tokens with scopes, the `tag_name` and `name` filters, and the API's
  # pagination (`page`, `per_page` default 20 and at most 200, `links.pages` with absolute URLs on
  # api.digitalocean.com as the real API writes them, `meta.total`). Faults are HttpFake's.
  #
  #   ca = TestCA.make!()
  #   fake = FakeDigitalOcean.start!(tls: ca, droplets: [FakeDigitalOcean.droplet(1, "web-1", "10.0.0.1")])
  #   fake.url                                   # the api_url to configure
  #   FakeDigitalOcean.set_droplets(fake, [...])
  #   FakeDigitalOcean.requests(fake)            # HttpFake's request log
  #   FakeDigitalOcean.fault(fake, {429, [{"retry-after", "1"}], "{}"})
  #
  # Options: `:tls` (a TestCA, or nil for plain HTTP), `:ip`, `:token` (default "good-token"),
  # `:scopes` (default ["droplet:read", "tag:read"]), `:page_size` (the server caps per_page at
  # it, to paginate small lists), `:droplets`.

  alias LibclusterRs.Test.{HttpFake, JSON}

  defstruct [:http, :state, :url]

  @public_api "https://api.digitalocean.com"

  def start!(opts \\ []) do
    {:ok, state} =
      Agent.start(fn ->
        %{
          droplets: Keyword.get(opts, :droplets, []),
          token: Keyword.get(opts, :token, "good-token"),
          scopes: Keyword.get(opts, :scopes, ["droplet:read", "tag:read"]),
          page_size: Keyword.get(opts, :page_size, 200)
        }
      end)

    http =
      HttpFake.start!(
        handler: &handle(state, &1),
        tls: Keyword.get(opts, :tls),
        ip: Keyword.get(opts, :ip, {127, 0, 0, 1})
      )

    %__MODULE__{http: http, state: state, url: HttpFake.url(http)}
  end

  def stop(%__MODULE__{http: http, state: state}) do
    HttpFake.stop(http)
    if Process.alive?(state), do: Agent.stop(state)
    :ok
  end

  def set_droplets(%__MODULE__{state: s}, droplets), do: Agent.update(s, &%{&1 | droplets: droplets})
  def set(%__MODULE__{state: s}, key, value), do: Agent.update(s, &Map.put(&1, key, value))
  def requests(%__MODULE__{http: http}), do: HttpFake.requests(http)
  def clear_requests(%__MODULE__{http: http}), do: HttpFake.clear_requests(http)
  def fault(%__MODULE__{http: http}, fault, count \\ 1), do: HttpFake.fault(http, fault, count)
  def faults_left(%__MODULE__{http: http}), do: HttpFake.faults_left(http)

  @doc """
  A Droplet as the API returns it (the attributes of a real one, so bodies have a real size):
  `private` is its VPC IPv4 address; options `:public` (IPv4), `:ipv6` (public IPv6), `:status`
  (default "active"), `:tags`.
  """
  def droplet(id, name, private, opts \\ []) do
    public = Keyword.get(opts, :public, "203.0.113.#{rem(id, 250) + 1}")
    v6 = Keyword.get(opts, :ipv6)

    %{
      "id" => id,
      "name" => name,
      "memory" => 1024,
      "vcpus" => 1,
      "disk" => 25,
      "locked" => false,
      "status" => Keyword.get(opts, :status, "active"),
      "kernel" => nil,
      "created_at" => "2026-11-20T10:00:00Z",
      "features" => ["backups", "private_networking", "ipv6", "monitoring"],
      "backup_ids" => [53_893_572],
      "next_backup_window" => %{"start" => "2026-11-24T20:00:00Z", "end" => "2026-11-25T19:00:00Z"},
      "snapshot_ids" => [],
      "image" => %{
        "id" => 63_663_980,
        "name" => "24.04 (LTS) x64",
        "distribution" => "Ubuntu",
        "slug" => "ubuntu-24-04-x64",
        "public" => true,
        "regions" => ["ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "syd1", "tor1"],
        "created_at" => "2026-05-30T19:28:42Z",
        "type" => "snapshot",
        "min_disk_size" => 20,
        "size_gigabytes" => 2.36,
        "description" => "",
        "tags" => [],
        "status" => "available",
        "error_message" => ""
      },
      "volume_ids" => [],
      "size" => %{
        "slug" => "s-1vcpu-1gb",
        "memory" => 1024,
        "vcpus" => 1,
        "disk" => 25,
        "transfer" => 1,
        "price_monthly" => 6,
        "price_hourly" => 0.00893,
        "regions" => ["ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "syd1", "tor1"],
        "available" => true,
        "description" => "Basic"
      },
      "size_slug" => "s-1vcpu-1gb",
      "networks" => %{
        "v4" => [
          %{
            "ip_address" => private,
            "netmask" => "255.255.240.0",
            "gateway" => "10.116.0.1",
            "type" => "private"
          },
          %{
            "ip_address" => public,
            "netmask" => "255.255.240.0",
            "gateway" => "203.0.113.254",
            "type" => "public"
          }
        ],
        "v6" =>
          if(v6,
            do: [
              %{"ip_address" => v6, "netmask" => 64, "gateway" => "2604:a880:800:10::1", "type" => "public"}
            ],
            else: []
          )
      },
      "region" => %{
        "name" => "New York 3",
        "slug" => "nyc3",
        "features" => ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"],
        "available" => true,
        "sizes" => ["s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]
      },
      "tags" => Keyword.get(opts, :tags, []),
      "vpc_uuid" => "760e09ef-dc84-11e8-981e-3cfdfeaae000"
    }
  end

  @doc "One `/v2/droplets` page body for `droplets` (for benchmarks and unit checks)."
  def page_body(droplets, page, per_page, total, query \\ %{}) do
    JSON.encode_binary(page_object(droplets, page, per_page, total, query))
  end

  defp handle(state, req) do
    s = Agent.get(state, & &1)

    cond do
      req.method != "GET" or req.path != "/v2/droplets" ->
        error(404, "not_found", "The resource you were accessing could not be found.")

      req.headers["authorization"] != "Bearer " <> s.token ->
        error(401, "Unauthorized", "Unable to authenticate you")

      "droplet:read" not in s.scopes or (req.query["tag_name"] && "tag:read" not in s.scopes) ->
        error(403, "Forbidden", "You are not authorized to perform this operation")

      req.query["tag_name"] && req.query["name"] ->
        error(422, "unprocessable_entity", "tag_name and name cannot be combined")

      true ->
        list(s, req.query)
    end
  end

  defp list(s, query) do
    droplets =
      cond do
        tag = query["tag_name"] ->
          Enum.filter(s.droplets, &(tag in &1["tags"]))

        name = query["name"] ->
          Enum.filter(s.droplets, &(String.downcase(&1["name"]) == String.downcase(name)))

        true ->
          s.droplets
      end

    with {:ok, page} <- positive(query["page"], 1),
         {:ok, per_page} <- positive(query["per_page"], 20) do
      per_page = per_page |> min(200) |> min(s.page_size)
      total = length(droplets)
      slice = droplets |> Enum.drop((page - 1) * per_page) |> Enum.take(per_page)
      body = page_object(slice, page, per_page, total, Map.drop(query, ["page", "per_page"]))

      {200,
       [
         {"content-type", "application/json; charset=utf-8"},
         {"ratelimit-limit", "5000"},
         {"ratelimit-remaining", "4999"},
         {"ratelimit-reset", "#{System.os_time(:second) + 60}"}
       ], JSON.encode_binary(body)}
    else
      _ -> error(400, "bad_request", "page and per_page must be positive integers")
    end
  end

  defp page_object(slice, page, per_page, total, query) do
    last = max(div(total + per_page - 1, per_page), 1)

    link = fn p ->
      "#{@public_api}/v2/droplets?" <>
        URI.encode_query(Map.merge(query, %{"page" => p, "per_page" => per_page}))
    end

    pages =
      %{}
      |> then(&if(page > 1, do: Map.merge(&1, %{"first" => link.(1), "prev" => link.(page - 1)}), else: &1))
      |> then(
        &if(page < last, do: Map.merge(&1, %{"next" => link.(page + 1), "last" => link.(last)}), else: &1)
      )

    %{"droplets" => slice, "links" => %{"pages" => pages}, "meta" => %{"total" => total}}
  end

  defp positive(nil, default), do: {:ok, default}

  defp positive(text, _default) do
    case Integer.parse(text) do
      {n, ""} when n > 0 -> {:ok, n}
      _ -> :error
    end
  end

  defp error(status, id, message),
    do:
      {status, [{"content-type", "application/json"}],
       JSON.encode_binary(%{"id" => id, "message" => message})}
end
