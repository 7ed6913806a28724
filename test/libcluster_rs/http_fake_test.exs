defmodule LibclusterRs.Test.HttpFakeTest do
  # The fake HTTP server the cloud-API tests build on, checked with OTP's own client (httpc), so
  # that a fault in the fake is not mistaken for one in the strategies.
  use ExUnit.Case, async: true

  alias LibclusterRs.Test.{HttpFake, TestCA}

  setup_all do
    :inets.start()
    :ssl.start()
    ca = TestCA.shared!()
    %{ca: ca}
  end

  # connection: close, so that every call makes its own TLS handshake (httpc pools connections).
  defp get(url, ssl \\ []) do
    case :httpc.request(:get, {to_charlist(url), [{~c"connection", ~c"close"}]}, [ssl: ssl, timeout: 5_000],
           body_format: :binary
         ) do
      {:ok, {{_, status, _}, headers, body}} ->
        {status, Map.new(headers, fn {k, v} -> {to_string(k), to_string(v)} end), body}

      {:error, reason} ->
        {:error, reason}
    end
  end

  test "plain HTTP: the handler answers, the log keeps each request, faults come first and in order" do
    fake = HttpFake.start!(handler: fn req -> {200, [{"x-path", req.path}], "hello #{req.query["q"]}"} end)
    on_exit(fn -> HttpFake.stop(fake) end)

    assert {200, %{"x-path" => "/a"}, "hello 1"} = get(HttpFake.url(fake) <> "/a?q=1")

    :ok = HttpFake.fault(fake, {429, [{"retry-after", "2"}], "slow down"}, 2)
    assert {429, %{"retry-after" => "2"}, "slow down"} = get(HttpFake.url(fake) <> "/b")
    assert {429, _, _} = get(HttpFake.url(fake) <> "/b")
    assert {200, _, "hello "} = get(HttpFake.url(fake) <> "/b")

    assert [%{path: "/a", query: %{"q" => "1"}, method: "GET"}, %{path: "/b"}, %{path: "/b"}, %{path: "/b"}] =
             HttpFake.requests(fake)
  end

  test "TLS: a client that trusts the test CA is served; one that trusts another CA is not", %{ca: ca} do
    fake = HttpFake.start!(handler: fn _ -> {200, [], "ok"} end, tls: ca)
    on_exit(fn -> HttpFake.stop(fake) end)
    verify = [verify: :verify_peer, server_name_indication: ~c"localhost"]

    assert {200, _, "ok"} = get(HttpFake.url(fake), [cacertfile: to_charlist(ca.ca)] ++ verify)
    assert {:error, _} = get(HttpFake.url(fake), [cacertfile: to_charlist(ca.other_ca)] ++ verify)
  end

  test "TLS with client_ca: a client without a certificate is refused, one with the CA's is served", %{ca: ca} do
    fake = HttpFake.start!(handler: fn _ -> {200, [], "ok"} end, tls: ca, client_ca: ca.ca)
    on_exit(fn -> HttpFake.stop(fake) end)
    verify = [verify: :verify_peer, cacertfile: to_charlist(ca.ca), server_name_indication: ~c"localhost"]

    assert {:error, _} = get(HttpFake.url(fake), verify)

    assert {200, _, "ok"} =
             get(
               HttpFake.url(fake),
               verify ++ [certfile: to_charlist(ca.client_cert), keyfile: to_charlist(ca.client_key)]
             )
  end
end
