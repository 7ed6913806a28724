Code.ensure_loaded!(LibclusterRs.Native)
LibclusterRs.Test.Lock.start()
# A loaded CI machine (2 cores) can take longer than the default 100 ms to deliver a message.
# Lanes (README, "Tests"): `mix test` is the fast inner loop; the :packaging and :slow tests are
# their own lanes of script/test (`mix test --only packaging`, `mix test --only slow`).
ExUnit.start(exclude: LibclusterRs.Test.Env.excludes(), assert_receive_timeout: 1_000)
ExUnit.after_suite(fn _ -> LibclusterRs.Test.TestCA.remove_shared() end)
