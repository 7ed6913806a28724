Code.ensure_loaded!(LibclusterRs.Native)
# A loaded CI machine (2 cores) can take longer than the default 100 ms to deliver a message.
ExUnit.start(exclude: LibclusterRs.Test.Env.excludes(), assert_receive_timeout: 1_000)
