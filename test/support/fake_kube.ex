defmodule LibclusterRs.Test.FakeKube do
  @moduledoc false
  # A Kubernetes API server for tests: HTTPS on 127.0.0.1 (or `ip:`, e.g. a netns bridge) with the
  # run's CA and server certificate (TestCA.shared!/1), bearer-token checks, list and watch (chunked JSON event stream) of
  # Endpoints, Pods and EndpointSlices in the shapes of the API reference, label and field
  # selectors, resourceVersions, bookmarks and 410 Gone, and injectable faults.
  #
  #     kube = FakeKube.start!()
  #     FakeKube.put(kube, :endpoints, FakeKube.endpoints("myapp", ["10.0.0.1"]))
  #     FakeKube.fault(kube, :list, {:status, 403})
  #
  # Faults are consumed one per matching request (`:list`, `:watch` or `:any`): `{:status, code}`,
  # `{:slow, ms}`, `:malformed`, `:truncate`. `break_watches/1` cuts open watch streams in the
  # middle of an event; `expire/1` compacts history (open watches get an ERROR 410 event and a
  # watch from an older resourceVersion is answered with one). `grant/2` sets the verbs the
  # service account's Role grants, as RBAC would: `FakeKube.grant(kube, [:list])` is a list-only
  # Role, whose every watch request is answered 403 Forbidden while lists succeed.
  use GenServer

  alias LibclusterRs.Test.JSON

  defstruct [:pid, :port, :dir, :sa_path, :master, :ca, :wrong_ca_sa_path]

  ## Setup

  def start!(opts \\ []) do
    dir = Path.join(System.tmp_dir!(), "fake_kube_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    ip = Keyword.get(opts, :ip, {127, 0, 0, 1})
    certs!(dir, ip)
    sa = Path.join(dir, "sa")
    File.mkdir_p!(sa)
    File.cp!(Path.join(dir, "ca.crt"), Path.join(sa, "ca.crt"))
    File.write!(Path.join(sa, "token"), "token-1\n")
    File.write!(Path.join(sa, "namespace"), Keyword.get(opts, :namespace, "default"))
    wrong = Path.join(dir, "sa-wrong-ca")
    File.mkdir_p!(wrong)
    File.cp!(Path.join(dir, "other-ca.crt"), Path.join(wrong, "ca.crt"))
    File.write!(Path.join(wrong, "token"), "token-1\n")
    File.write!(Path.join(wrong, "namespace"), "default")

    {:ok, pid} = GenServer.start(__MODULE__, {dir, ip})
    port = GenServer.call(pid, :port)

    %__MODULE__{
      pid: pid,
      port: port,
      dir: dir,
      sa_path: sa,
      master: "#{:inet.ntoa(ip)}:#{port}",
      ca: Path.join(dir, "ca.crt"),
      wrong_ca_sa_path: wrong
    }
  end

  def stop(%__MODULE__{pid: pid, dir: dir}) do
    if Process.alive?(pid), do: GenServer.stop(pid)
    File.rm_rf!(dir)
  end

  # The CA, the other CA and the server certificate come from the run's TestCA for `ip`, copied
  # into this server's dir (tests delete or rewrite the service account's files).
  defp certs!(dir, ip) do
    ca = LibclusterRs.Test.TestCA.shared!(ips: [ip])

    for {from, to} <- [
          {ca.ca, "ca.crt"},
          {ca.other_ca, "other-ca.crt"},
          {ca.cert, "server.crt"},
          {ca.key, "server.key"}
        ],
        do: File.cp!(from, Path.join(dir, to))
  end

  ## Objects

  def put(%__MODULE__{pid: pid}, kind, obj), do: GenServer.call(pid, {:put, kind, obj})

  def delete(%__MODULE__{pid: pid}, kind, name, ns \\ "default"),
    do: GenServer.call(pid, {:delete, kind, ns, name})

  def fault(%__MODULE__{pid: pid}, verb, fault), do: GenServer.call(pid, {:fault, verb, fault})
  @doc "How many queued faults no request has consumed yet (a barrier: `0` once all were served)."
  def faults_left(%__MODULE__{pid: pid}), do: GenServer.call(pid, :faults_left)
  def requests(%__MODULE__{pid: pid}), do: GenServer.call(pid, :requests)
  def clear_requests(%__MODULE__{pid: pid}), do: GenServer.call(pid, :clear_requests)
  def break_watches(%__MODULE__{pid: pid}), do: GenServer.call(pid, {:notify, :break})
  def bookmark(%__MODULE__{pid: pid}), do: GenServer.call(pid, :bookmark)
  def expire(%__MODULE__{pid: pid}), do: GenServer.call(pid, :expire)
  def watchers(%__MODULE__{pid: pid}), do: GenServer.call(pid, :watchers)

  @doc "The verbs the Role grants (default `[:list, :watch]`); others are answered 403 Forbidden."
  def grant(%__MODULE__{pid: pid}, verbs) when is_list(verbs), do: GenServer.call(pid, {:grant, verbs})

  @doc "Rotate the token: the file changes and only the new token is accepted."
  def rotate_token(%__MODULE__{pid: pid, sa_path: sa}, token) do
    File.write!(Path.join(sa, "token"), token <> "\n")
    GenServer.call(pid, {:token, token})
  end

  def endpoints(name, ready, opts \\ []) do
    ns = Keyword.get(opts, :namespace, "default")
    not_ready = Keyword.get(opts, :not_ready, [])

    %{
      "kind" => "Endpoints",
      "apiVersion" => "v1",
      "metadata" => meta(name, ns, Keyword.get(opts, :labels, %{"app" => name})),
      "subsets" => [
        %{
          "addresses" => Enum.map(ready, &address(&1, ns)),
          "notReadyAddresses" => Enum.map(not_ready, &address(&1, ns)),
          "ports" => [%{"name" => "epmd", "port" => 4369, "protocol" => "TCP"}]
        }
      ]
    }
  end

  defp address({ip, :no_target_ref}, _ns), do: %{"ip" => ip}

  defp address({ip, hostname}, ns) do
    %{
      "ip" => ip,
      "hostname" => hostname,
      "nodeName" => "node-1",
      "targetRef" => %{"kind" => "Pod", "namespace" => ns, "name" => hostname, "uid" => uid()}
    }
  end

  defp address(ip, ns), do: address({ip, "pod-" <> String.replace(ip, ~r/[.:]/, "-")}, ns)

  @doc "A pod as the API returns it; `ip` nil for a pod that has no IP yet."
  def pod(name, ip, opts \\ []) do
    ns = Keyword.get(opts, :namespace, "default")
    phase = Keyword.get(opts, :phase, "Running")
    ready = if Keyword.get(opts, :ready, true), do: "True", else: "False"
    meta = meta(name, ns, Keyword.get(opts, :labels, %{"app" => "myapp"}))

    meta =
      if Keyword.get(opts, :deleting, false),
        do: Map.put(meta, "deletionTimestamp", "2026-11-22T00:00:00Z"),
        else: meta

    pod = %{
      "kind" => "Pod",
      "apiVersion" => "v1",
      "metadata" =>
        Map.merge(meta, %{
          "generateName" => "myapp-",
          "ownerReferences" => [
            %{
              "apiVersion" => "apps/v1",
              "kind" => "StatefulSet",
              "name" => "myapp",
              "uid" => uid(),
              "controller" => true
            }
          ],
          "annotations" => %{"kubectl.kubernetes.io/restartedAt" => "2026-11-21T10:00:00Z"}
        }),
      "spec" => %{
        "hostname" => name,
        "subdomain" => Keyword.get(opts, :subdomain, "myapp-headless"),
        "nodeName" => "node-1",
        "serviceAccountName" => "myapp",
        "restartPolicy" => "Always",
        "containers" => [
          %{
            "name" => "app",
            "image" => "registry.example/myapp:1.2.3",
            "ports" => [%{"containerPort" => 4369, "protocol" => "TCP"}],
            "env" => [
              %{
                "name" => "RELEASE_COOKIE",
                "valueFrom" => %{"secretKeyRef" => %{"name" => "c", "key" => "k"}}
              }
            ],
            "resources" => %{"requests" => %{"cpu" => "100m", "memory" => "256Mi"}},
            "volumeMounts" => [
              %{
                "name" => "kube-api-access",
                "mountPath" => "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly" => true
              }
            ]
          }
        ],
        "volumes" => [%{"name" => "kube-api-access", "projected" => %{"defaultMode" => 420}}],
        "tolerations" => [
          %{
            "key" => "node.kubernetes.io/not-ready",
            "operator" => "Exists",
            "effect" => "NoExecute",
            "tolerationSeconds" => 300
          }
        ]
      },
      "status" => %{
        "phase" => phase,
        "podIP" => ip,
        "podIPs" => [%{"ip" => ip}],
        "hostIP" => "192.0.2.10",
        "startTime" => "2026-11-22T00:00:00Z",
        "qosClass" => "Burstable",
        "conditions" =>
          for t <- ["Initialized", "Ready", "ContainersReady", "PodScheduled"] do
            status = if t in ["Ready", "ContainersReady"], do: ready, else: "True"

            %{
              "type" => t,
              "status" => status,
              "lastProbeTime" => nil,
              "lastTransitionTime" => "2026-11-22T00:00:00Z"
            }
          end,
        "containerStatuses" => [
          %{
            "name" => "app",
            "ready" => ready == "True",
            "restartCount" => 0,
            "image" => "registry.example/myapp:1.2.3",
            "imageID" => "registry.example/myapp@sha256:" <> String.duplicate("ab", 32),
            "containerID" => "containerd://" <> String.duplicate("cd", 32),
            "started" => true,
            "state" => %{"running" => %{"startedAt" => "2026-11-22T00:00:01Z"}}
          }
        ]
      }
    }

    # A pod without an IP yet (scheduled, sandbox not up): the API omits the empty fields.
    if ip == nil, do: update_in(pod["status"], &Map.drop(&1, ["podIP", "podIPs"])), else: pod
  end

  @doc "An EndpointSlice; `endpoints` are `{ip, pod_name, conditions_map}`."
  def slice(name, service, family, endpoints, opts \\ []) do
    ns = Keyword.get(opts, :namespace, "default")

    %{
      "kind" => "EndpointSlice",
      "apiVersion" => "discovery.k8s.io/v1",
      "metadata" =>
        meta(name, ns, %{
          "kubernetes.io/service-name" => service,
          "endpointslice.kubernetes.io/managed-by" => "endpointslice-controller.k8s.io",
          "app" => service
        }),
      "addressType" => family,
      "endpoints" =>
        Enum.map(endpoints, fn {ip, pod, conditions} ->
          %{
            "addresses" => [ip],
            "conditions" => conditions,
            "hostname" => pod,
            "nodeName" => "node-1",
            "targetRef" => %{"kind" => "Pod", "namespace" => ns, "name" => pod, "uid" => uid()}
          }
        end),
      "ports" => [%{"name" => "epmd", "port" => 4369, "protocol" => "TCP"}]
    }
  end

  def ready, do: %{"ready" => true, "serving" => true, "terminating" => false}
  def terminating, do: %{"ready" => false, "serving" => true, "terminating" => true}
  def not_ready, do: %{"ready" => false, "serving" => false, "terminating" => false}

  defp meta(name, ns, labels) do
    %{
      "name" => name,
      "namespace" => ns,
      "uid" => uid(),
      "labels" => labels,
      "creationTimestamp" => "2026-11-22T00:00:00Z",
      "managedFields" => [
        %{"manager" => "kube-controller-manager", "operation" => "Update", "apiVersion" => "v1"}
      ]
    }
  end

  defp uid do
    <<a::32, b::16, c::16, d::16, e::48>> = :crypto.strong_rand_bytes(16)
    :io_lib.format("~8.16.0b-~4.16.0b-~4.16.0b-~4.16.0b-~12.16.0b", [a, b, c, d, e]) |> IO.iodata_to_binary()
  end

  ## Server

  @impl true
  def init({dir, ip}) do
    {:ok, listen} =
      :ssl.listen(0, [
        :binary,
        ip: ip,
        active: false,
        reuseaddr: true,
        certfile: to_charlist(Path.join(dir, "server.crt")),
        keyfile: to_charlist(Path.join(dir, "server.key")),
        versions: [:"tlsv1.3", :"tlsv1.2"]
      ])

    {:ok, {_, port}} = :ssl.sockname(listen)
    server = self()
    acceptor = spawn_link(fn -> accept_loop(listen, server) end)

    {:ok,
     %{
       listen: listen,
       acceptor: acceptor,
       port: port,
       token: "token-1",
       rv: 1000,
       min_rv: 0,
       objects: %{},
       log: [],
       watchers: %{},
       faults: [],
       requests: [],
       verbs: [:list, :watch]
     }}
  end

  @impl true
  def handle_call(:port, _from, s), do: {:reply, s.port, s}
  def handle_call(:requests, _from, s), do: {:reply, Enum.reverse(s.requests), s}
  def handle_call(:clear_requests, _from, s), do: {:reply, :ok, %{s | requests: []}}
  def handle_call(:watchers, _from, s), do: {:reply, map_size(s.watchers), s}
  def handle_call(:faults_left, _from, s), do: {:reply, length(s.faults), s}
  def handle_call({:token, token}, _from, s), do: {:reply, :ok, %{s | token: token}}
  def handle_call({:grant, verbs}, _from, s), do: {:reply, :ok, %{s | verbs: verbs}}

  def handle_call({:fault, verb, fault}, _from, s),
    do: {:reply, :ok, %{s | faults: s.faults ++ [{verb, fault}]}}

  def handle_call({:notify, msg}, _from, s) do
    for {pid, _} <- s.watchers, do: send(pid, msg)
    {:reply, :ok, s}
  end

  def handle_call(:bookmark, _from, s) do
    for {pid, _} <- s.watchers, do: send(pid, {:bookmark, s.rv})
    {:reply, :ok, s}
  end

  def handle_call(:expire, _from, s) do
    for {pid, _} <- s.watchers, do: send(pid, :gone)
    {:reply, :ok, %{s | min_rv: s.rv, log: []}}
  end

  def handle_call({:put, kind, obj}, _from, s) do
    rv = s.rv + 1
    ns = obj["metadata"]["namespace"]
    key = {kind, ns, obj["metadata"]["name"]}
    type = if Map.has_key?(s.objects, key), do: "MODIFIED", else: "ADDED"
    obj = put_in(obj, ["metadata", "resourceVersion"], Integer.to_string(rv))
    s = %{s | rv: rv, objects: Map.put(s.objects, key, obj), log: [{rv, kind, type, obj} | s.log]}
    notify(s, kind, type, obj)
    {:reply, :ok, s}
  end

  def handle_call({:delete, kind, ns, name}, _from, s) do
    case Map.pop(s.objects, {kind, ns, name}) do
      {nil, _} ->
        {:reply, :ok, s}

      {obj, objects} ->
        rv = s.rv + 1
        obj = put_in(obj, ["metadata", "resourceVersion"], Integer.to_string(rv))
        s = %{s | rv: rv, objects: objects, log: [{rv, kind, "DELETED", obj} | s.log]}
        notify(s, kind, "DELETED", obj)
        {:reply, :ok, s}
    end
  end

  def handle_call({:request, req}, {handler, _}, s) do
    s = %{s | requests: [req | s.requests]}

    cond do
      req.auth != "Bearer " <> s.token ->
        {:reply, {:status, 401, "Unauthorized", "Unauthorized"}, s}

      req.kind == nil ->
        {:reply, {:status, 404, "NotFound", "the server could not find the requested resource"}, s}

      req.verb not in s.verbs ->
        {:reply, fault_action({:status, 403}, req), s}

      true ->
        case pop_fault(s.faults, req.verb) do
          {fault, rest} -> {:reply, fault_action(fault, req), %{s | faults: rest}}
          nil -> answer(req, handler, s)
        end
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _, _}, s) do
    {:noreply, %{s | watchers: Map.reject(s.watchers, fn {_, {_, r}} -> r == ref end)}}
  end

  def handle_info(_, s), do: {:noreply, s}

  defp pop_fault(faults, verb) do
    case Enum.split_while(faults, fn {v, _} -> v != verb and v != :any end) do
      {_, []} -> nil
      {before, [{_, fault} | rest]} -> {fault, before ++ rest}
    end
  end

  defp fault_action({:status, 403}, req) do
    resource = Atom.to_string(req.kind)
    group = if req.kind == :endpointslices, do: "discovery.k8s.io", else: ""
    shown = if group == "", do: resource, else: "#{resource}.#{group}"

    {:status, 403, "Forbidden",
     ~s(#{shown} is forbidden: User "system:serviceaccount:default:myapp" cannot #{req.verb} ) <>
       ~s(resource "#{resource}" in API group "#{group}" in the namespace "#{req.namespace}")}
  end

  defp fault_action({:status, 404}, _req), do: {:status, 404, "NotFound", "namespaces not found"}

  defp fault_action({:status, code}, _req),
    do: {:status, code, "InternalError", "etcdserver: request timed out"}

  defp fault_action(other, _req), do: other

  defp answer(%{verb: :list} = req, _handler, s) do
    items =
      for {{kind, ns, _}, obj} <- s.objects,
          kind == req.kind,
          ns == req.namespace,
          matches?(obj, req),
          do: obj

    list = %{
      "kind" => list_kind(req.kind),
      "apiVersion" => if(req.kind == :endpointslices, do: "discovery.k8s.io/v1", else: "v1"),
      "metadata" => %{"resourceVersion" => Integer.to_string(s.rv)},
      "items" => items
    }

    {:reply, {:json, JSON.encode_binary(list)}, s}
  end

  defp answer(%{verb: :watch} = req, handler, s) do
    since = String.to_integer(req.query["resourceVersion"] || "0")

    if since != 0 and since < s.min_rv do
      {:reply, {:watch, [gone_event()], req}, s}
    else
      events =
        for {rv, kind, type, obj} <- Enum.reverse(s.log), kind == req.kind, rv > since do
          {type, obj}
        end

      ref = Process.monitor(handler)

      {:reply, {:watch, Enum.map(events, &event_json/1), req},
       %{s | watchers: Map.put(s.watchers, handler, {req, ref})}}
    end
  end

  defp notify(s, kind, type, obj) do
    for {pid, {req, _}} <- s.watchers, req.kind == kind, obj["metadata"]["namespace"] == req.namespace do
      # Objects that stop matching a selector leave the watch as DELETED, as on a real server.
      type = if matches?(obj, req), do: type, else: "DELETED"
      send(pid, {:event, event_json({type, obj})})
    end
  end

  defp event_json({type, obj}), do: JSON.encode_binary(%{"type" => type, "object" => obj})

  defp gone_event do
    JSON.encode_binary(%{
      "type" => "ERROR",
      "object" => %{
        "kind" => "Status",
        "apiVersion" => "v1",
        "status" => "Failure",
        "message" => "too old resource version",
        "reason" => "Expired",
        "code" => 410
      }
    })
  end

  defp list_kind(:endpoints), do: "EndpointsList"
  defp list_kind(:pods), do: "PodList"
  defp list_kind(:endpointslices), do: "EndpointSliceList"

  defp matches?(obj, req) do
    selector_ok?(req.query["labelSelector"], fn k -> get_in(obj, ["metadata", "labels", k]) end) and
      selector_ok?(req.query["fieldSelector"], fn path -> get_in(obj, String.split(path, ".")) end)
  end

  defp selector_ok?(nil, _get), do: true

  defp selector_ok?(selector, get) do
    selector
    |> String.split(",", trim: true)
    |> Enum.all?(fn term ->
      case String.split(term, ["!=", "==", "="], parts: 2) do
        [k, v] -> if String.contains?(term, "!="), do: get.(k) != v, else: get.(k) == v
        [k] -> get.(k) != nil
      end
    end)
  end

  ## Connections

  defp accept_loop(listen, server) do
    case :ssl.transport_accept(listen) do
      {:ok, sock} ->
        pid = spawn(fn -> handle_connection(sock, server) end)
        :ssl.controlling_process(sock, pid)
        send(pid, :go)
        accept_loop(listen, server)

      {:error, _} ->
        :ok
    end
  end

  defp handle_connection(sock, server) do
    receive do
      :go -> :ok
    end

    # A client that does not trust our certificate fails here: no request is ever read.
    case :ssl.handshake(sock, 5_000) do
      {:ok, sock} -> serve(sock, server, "")
      {:error, _} -> :ok
    end
  end

  defp serve(sock, server, buffer) do
    case read_head(sock, buffer) do
      {:ok, head, rest} ->
        req = parse_request(head)

        case GenServer.call(server, {:request, req}) do
          {:watch, events, req} ->
            stream_watch(sock, events, req)

          action ->
            if respond(sock, action) == :keep_alive, do: serve(sock, server, rest), else: :ssl.close(sock)
        end

      :closed ->
        :ok
    end
  end

  defp read_head(sock, buffer) do
    case :binary.split(buffer, "\r\n\r\n") do
      [head, rest] ->
        {:ok, head, rest}

      [_] ->
        case :ssl.recv(sock, 0, 30_000) do
          {:ok, data} -> read_head(sock, buffer <> data)
          {:error, _} -> :closed
        end
    end
  end

  defp parse_request(head) do
    [line | headers] = String.split(head, "\r\n")
    [method, target | _] = String.split(line, " ")

    {path, query} =
      case String.split(target, "?", parts: 2),
        do:
          (
            [p, q] -> {p, q}
            [p] -> {p, ""}
          )

    query = URI.decode_query(query)

    headers =
      Map.new(headers, fn h ->
        [k, v] = String.split(h, ":", parts: 2)
        {String.downcase(k), String.trim(v)}
      end)

    {kind, namespace} =
      case String.split(path, "/", trim: true) do
        ["api", "v1", "namespaces", ns, "endpoints"] -> {:endpoints, ns}
        ["api", "v1", "namespaces", ns, "pods"] -> {:pods, ns}
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] -> {:endpointslices, ns}
        _ -> {nil, nil}
      end

    %{
      method: method,
      path: path,
      query: query,
      kind: kind,
      namespace: namespace,
      verb: if(query["watch"] in ["1", "true"], do: :watch, else: :list),
      auth: headers["authorization"],
      at: System.monotonic_time(:millisecond)
    }
  end

  defp respond(sock, {:json, body}) do
    send_response(sock, 200, "OK", body)
    :keep_alive
  end

  defp respond(sock, {:status, code, reason, message}) do
    body =
      JSON.encode_binary(%{
        "kind" => "Status",
        "apiVersion" => "v1",
        "metadata" => %{},
        "status" => "Failure",
        "message" => message,
        "reason" => reason,
        "code" => code
      })

    send_response(sock, code, reason, body)
    :keep_alive
  end

  defp respond(sock, {:slow, ms}) do
    Process.sleep(ms)
    send_response(sock, 500, "Slow", "{}")
    :close
  end

  defp respond(sock, :malformed) do
    send_response(
      sock,
      200,
      "OK",
      ~s({"kind":"PodList","items":[{"metadata":{"name":"x"},"status":{"phase":"Run)
    )

    :keep_alive
  end

  defp respond(sock, :truncate) do
    body = ~s({"kind":"EndpointsList","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"},)

    :ssl.send(sock, [
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ",
      Integer.to_string(byte_size(body) + 500),
      "\r\n\r\n",
      body
    ])

    :close
  end

  defp send_response(sock, code, reason, body) do
    :ssl.send(sock, [
      "HTTP/1.1 #{code} #{reason}\r\nContent-Type: application/json\r\nContent-Length: ",
      Integer.to_string(byte_size(body)),
      "\r\n\r\n",
      body
    ])
  end

  defp stream_watch(sock, events, req) do
    :ssl.send(
      sock,
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    Enum.each(events, &send_chunk(sock, &1))
    timeout = String.to_integer(req.query["timeoutSeconds"] || "300") * 1000
    deadline = System.monotonic_time(:millisecond) + timeout
    watch_loop(sock, deadline)
  end

  defp watch_loop(sock, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:event, json} ->
        if send_chunk(sock, json) == :ok, do: watch_loop(sock, deadline), else: :ok

      {:bookmark, rv} ->
        json =
          JSON.encode_binary(%{
            "type" => "BOOKMARK",
            "object" => %{
              "kind" => "Endpoints",
              "apiVersion" => "v1",
              "metadata" => %{"resourceVersion" => Integer.to_string(rv)}
            }
          })

        if send_chunk(sock, json) == :ok, do: watch_loop(sock, deadline), else: :ok

      :gone ->
        send_chunk(sock, gone_event())
        :ssl.send(sock, "0\r\n\r\n")
        :ssl.close(sock)

      :break ->
        # Half an event, then the connection drops without the final chunk.
        :ssl.send(sock, "40\r\n{\"type\":\"MODIFIED\",\"object\":{\"metadata\":")
        :ssl.close(sock)
    after
      left ->
        :ssl.send(sock, "0\r\n\r\n")
        :ssl.close(sock)
    end
  end

  defp send_chunk(sock, json) do
    data = [json, ?\n]
    :ssl.send(sock, [Integer.to_string(IO.iodata_length(data), 16), "\r\n", data, "\r\n"])
  end
end
