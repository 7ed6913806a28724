Code.ensure_loaded!(Cluster.Native)
ExUnit.start(exclude: Cluster.Test.Env.excludes())
