Code.ensure_loaded!(Cluster.Native)
# A loaded CI machine (2 cores) can take longer than the default 100 ms to deliver a message.
ExUnit.start(exclude: Cluster.Test.Env.excludes(), assert_receive_timeout: 1_000)
