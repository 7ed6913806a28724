defmodule LibclusterRs.Test.HttpFake do
  @moduledoc false
  # A small HTTP/1.1 server for fake cloud APIs (Consul, DigitalOcean, metadata services...):
  # plain TCP or TLS (with a `LibclusterRs.Test.TestCA`, optionally requiring a client
  # certificate), keep-alive, Content-Length request bodies, a request log, and queued faults.
  #
  #   fake = HttpFake.start!(handler: fn req -> {200, [{"content-type", "application/json"}], body} end,
  #                          tls: ca, client_ca: ca.ca, ip: {127, 0, 0, 1})
  #   HttpFake.url(fake)          #=> "https://127.0.0.1:40123"
  #   HttpFake.requests(fake)     #=> [%{method: "GET", path: "/v2/droplets", query: %{...}, headers: %{...}, body: ""}]
  #   HttpFake.fault(fake, {429, [{"retry-after", "1"}], "slow down"}, 2)   # the next 2 requests
  #   HttpFake.fault(fake, {:delay, 3_000})                                 # then answer normally
  #   HttpFake.faults_left(fake)  #=> 0 once every queued fault was served
  #   HttpFake.stop(fake)
  #
  # A request is `%{method, path, query (decoded map), raw_query, headers (lowercased keys), body}`.
  # The handler runs in the connection's own process (so it may block, e.g. a Consul blocking
  # query that waits for a change) and returns:
  #   {status, headers, body}   - body is iodata; content-length is added
  #   {:delay, ms, response}    - answer after ms
  #   :close                    - close the connection without an answer
  # Faults use the same shapes plus `{:delay, ms}` (wait, then let the handler answer); each is
  # consumed by one request, in order, before the handler runs.

  use GenServer

  defstruct [:pid, :port, :ip, :scheme]

  def start!(opts) do
    {:ok, pid} = GenServer.start(__MODULE__, opts)
    {port, ip, scheme} = GenServer.call(pid, :info)
    %__MODULE__{pid: pid, port: port, ip: ip, scheme: scheme}
  end

  def url(%__MODULE__{port: port, ip: ip, scheme: scheme}), do: "#{scheme}://#{:inet.ntoa(ip)}:#{port}"
  def requests(%__MODULE__{pid: pid}), do: GenServer.call(pid, :requests)
  def clear_requests(%__MODULE__{pid: pid}), do: GenServer.call(pid, :clear_requests)
  def fault(%__MODULE__{pid: pid}, fault, count \\ 1), do: GenServer.call(pid, {:fault, fault, count})
  @doc "How many queued faults no request has consumed yet (a barrier: `0` once all were served)."
  def faults_left(%__MODULE__{pid: pid}), do: GenServer.call(pid, :faults_left)
  def set_handler(%__MODULE__{pid: pid}, handler), do: GenServer.call(pid, {:handler, handler})

  def stop(%__MODULE__{pid: pid}) do
    if Process.alive?(pid), do: GenServer.stop(pid)
    :ok
  end

  ## Server

  @impl true
  def init(opts) do
    ip = Keyword.get(opts, :ip, {127, 0, 0, 1})
    base = [:binary, ip: ip, active: false, reuseaddr: true]

    {transport, listen, scheme} =
      case Keyword.get(opts, :tls) do
        nil ->
          {:ok, l} = :gen_tcp.listen(Keyword.get(opts, :port, 0), base)
          {:gen_tcp, l, "http"}

        ca ->
          client =
            case Keyword.get(opts, :client_ca) do
              nil -> []
              path -> [verify: :verify_peer, fail_if_no_peer_cert: true, cacertfile: to_charlist(path)]
            end

          {:ok, l} =
            :ssl.listen(
              Keyword.get(opts, :port, 0),
              base ++
                [
                  certfile: to_charlist(ca.cert),
                  keyfile: to_charlist(ca.key),
                  versions: [:"tlsv1.3", :"tlsv1.2"]
                ] ++
                client
            )

          {:ssl, l, "https"}
      end

    {:ok, {_, port}} = if transport == :ssl, do: :ssl.sockname(listen), else: :inet.sockname(listen)
    server = self()
    acceptor = spawn_link(fn -> accept_loop(transport, listen, server) end)

    {:ok,
     %{
       transport: transport,
       listen: listen,
       acceptor: acceptor,
       port: port,
       ip: ip,
       scheme: scheme,
       handler: Keyword.fetch!(opts, :handler),
       faults: [],
       requests: []
     }}
  end

  @impl true
  def handle_call(:info, _from, s), do: {:reply, {s.port, s.ip, s.scheme}, s}
  def handle_call(:requests, _from, s), do: {:reply, Enum.reverse(s.requests), s}
  def handle_call(:clear_requests, _from, s), do: {:reply, :ok, %{s | requests: []}}
  def handle_call(:faults_left, _from, s), do: {:reply, length(s.faults), s}
  def handle_call({:handler, h}, _from, s), do: {:reply, :ok, %{s | handler: h}}

  def handle_call({:fault, fault, count}, _from, s),
    do: {:reply, :ok, %{s | faults: s.faults ++ List.duplicate(fault, count)}}

  def handle_call({:request, req}, _from, s) do
    s = %{s | requests: [req | s.requests]}

    case s.faults do
      [fault | rest] -> {:reply, {fault, s.handler}, %{s | faults: rest}}
      [] -> {:reply, {nil, s.handler}, s}
    end
  end

  @impl true
  def terminate(_reason, s) do
    close(s.transport, s.listen)
  end

  ## Connections

  defp accept_loop(transport, listen, server) do
    accepted = if transport == :ssl, do: :ssl.transport_accept(listen), else: :gen_tcp.accept(listen)

    case accepted do
      {:ok, sock} ->
        pid = spawn(fn -> connection(transport, sock, server) end)
        transport.controlling_process(sock, pid)
        send(pid, :go)
        accept_loop(transport, listen, server)

      {:error, _} ->
        :ok
    end
  end

  defp connection(transport, sock, server) do
    receive do
      :go -> :ok
    end

    # A client that does not trust our certificate (or, with client_ca, sends none) fails here.
    case transport do
      :ssl ->
        case :ssl.handshake(sock, 5_000) do
          {:ok, sock} -> serve(:ssl, sock, server, "")
          {:error, _} -> :ok
        end

      :gen_tcp ->
        serve(:gen_tcp, sock, server, "")
    end
  end

  defp serve(t, sock, server, buffer) do
    with {:ok, head, rest} <- read_head(t, sock, buffer),
         req = parse_head(head),
         {:ok, body, rest} <- read_body(t, sock, rest, content_length(req)) do
      req = %{req | body: body}

      {fault, handler} =
        try do
          GenServer.call(server, {:request, req})
        catch
          :exit, _ -> {:close, nil}
        end

      response =
        case fault do
          nil -> handler.(req)
          {:delay, ms} -> Process.sleep(ms) && handler.(req)
          other -> other
        end

      case send_response(t, sock, response) do
        :ok -> serve(t, sock, server, rest)
        :closed -> close(t, sock)
      end
    else
      _ -> close(t, sock)
    end
  end

  defp send_response(t, sock, {:delay, ms, response}) do
    Process.sleep(ms)
    send_response(t, sock, response)
  end

  defp send_response(_t, _sock, :close), do: :closed

  defp send_response(t, sock, {status, headers, body}) do
    body = IO.iodata_to_binary(body)

    head =
      ["HTTP/1.1 #{status} #{reason(status)}\r\n"] ++
        Enum.map(headers, fn {k, v} -> "#{k}: #{v}\r\n" end) ++
        ["content-length: #{byte_size(body)}\r\n\r\n"]

    case apply(t, :send, [sock, [head, body]]) do
      :ok -> :ok
      {:error, _} -> :closed
    end
  end

  defp read_head(t, sock, buffer) do
    case :binary.split(buffer, "\r\n\r\n") do
      [head, rest] ->
        {:ok, head, rest}

      [_] ->
        case apply(t, :recv, [sock, 0, 60_000]) do
          {:ok, data} -> read_head(t, sock, buffer <> data)
          {:error, _} -> :closed
        end
    end
  end

  defp read_body(_t, _sock, buffer, length) when byte_size(buffer) >= length do
    # split_binary/2, not a `binary-size(length)` match: Elixir 1.20 wants `^length` there, which
    # Elixir 1.14 rejects.
    {body, rest} = :erlang.split_binary(buffer, length)
    {:ok, body, rest}
  end

  defp read_body(t, sock, buffer, length) do
    case apply(t, :recv, [sock, 0, 60_000]) do
      {:ok, data} -> read_body(t, sock, buffer <> data, length)
      {:error, _} -> :closed
    end
  end

  defp content_length(req) do
    case Integer.parse(req.headers["content-length"] || "0") do
      {n, ""} when n >= 0 -> n
      _ -> 0
    end
  end

  defp parse_head(head) do
    [line | headers] = String.split(head, "\r\n")
    [method, target | _] = String.split(line, " ")
    [path | query] = String.split(target, "?", parts: 2)
    raw_query = List.first(query, "")

    headers =
      for h <- headers,
          [k, v] <- [String.split(h, ":", parts: 2)],
          into: %{},
          do: {String.downcase(k), String.trim(v)}

    %{
      method: method,
      path: path,
      query: URI.decode_query(raw_query),
      raw_query: raw_query,
      headers: headers,
      body: ""
    }
  end

  defp close(:ssl, sock), do: :ssl.close(sock)
  defp close(:gen_tcp, sock), do: :gen_tcp.close(sock)

  defp reason(200), do: "OK"
  defp reason(400), do: "Bad Request"
  defp reason(401), do: "Unauthorized"
  defp reason(403), do: "Forbidden"
  defp reason(404), do: "Not Found"
  defp reason(429), do: "Too Many Requests"
  defp reason(500), do: "Internal Server Error"
  defp reason(503), do: "Service Unavailable"
  defp reason(_), do: "Status"
end
