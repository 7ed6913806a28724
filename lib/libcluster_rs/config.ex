defmodule LibclusterRs.Config do
  @moduledoc false
  # Config resolution and validation shared by the supervisor and every built-in strategy.
  #
  # `{:system, "VAR", default}` (string), `{:system, :integer | :atom | :string | :boolean, "VAR",
  # default}` and `{:system, "VAR"}` values are resolved at start. An unset `{:system, "VAR"}` (it
  # has no default) or a value that cannot be converted raises an ArgumentError naming the variable
  # and the key. Validation raises ArgumentError messages of the form
  # "expected :port to be an integer in 1..65535, got: 0".

  @type validator :: (term() -> {:ok, term()} | {:error, String.t()})
  @type schema :: [{atom(), default :: term(), validator()}]

  @doc """
  Resolves every `{:system, ...}` value in a keyword list (top level only). An error names the
  topology, the key and the environment variable.
  """
  @spec resolve_system!(Keyword.t(), atom() | nil) :: Keyword.t()
  def resolve_system!(config, topology \\ nil) when is_list(config) do
    Enum.map(config, fn
      {key, value} -> {key, resolve_value!(value, {topology, key})}
      other -> other
    end)
  end

  @doc """
  Resolves one `{:system, ...}` value. `where` is `{topology, key}` (either may be `nil`) and is
  named in the error: a `{:system, "VAR"}` whose variable is unset (no default to fall back on),
  or a typed value that cannot be converted, raises an `ArgumentError` naming the variable and
  the key.
  """
  @spec resolve_value!(term(), {atom() | nil, atom() | nil}) :: term()
  def resolve_value!(value, where \\ {nil, nil})

  def resolve_value!({:system, var} = value, where) when is_binary(var) do
    case System.get_env(var) do
      nil ->
        raise ArgumentError,
              prefix(where) <>
                "#{inspect(value)} names the environment variable #{var}, which is not set; set it, " <>
                "or give a default: {:system, #{inspect(var)}, default}"

      raw ->
        raw
    end
  end

  def resolve_value!({:system, var, default}, _where) when is_binary(var), do: System.get_env(var) || default

  def resolve_value!({:system, type, var, default}, where) when is_binary(var) do
    case System.get_env(var) do
      nil -> check_type!(type, var, where, default)
      "" -> check_type!(type, var, where, default)
      raw -> convert!(type, var, where, raw)
    end
  end

  def resolve_value!(value, _where), do: value

  defp prefix({nil, nil}), do: ""
  defp prefix({nil, key}), do: "invalid config: #{inspect(key)}: "
  defp prefix({topology, nil}), do: "invalid config for topology #{inspect(topology)}: "
  defp prefix({topology, key}), do: "invalid config for topology #{inspect(topology)}: #{inspect(key)}: "

  @types [:string, :integer, :atom, :boolean]

  defp check_type!(type, _var, _where, default) when type in @types, do: default
  defp check_type!(type, var, where, _default), do: convert!(type, var, where, "")

  defp convert!(:string, _var, _where, raw), do: raw

  defp convert!(:integer, var, where, raw) do
    case Integer.parse(String.trim(raw)) do
      {int, ""} -> int
      _ -> bad_env!(where, var, "an integer", raw)
    end
  end

  defp convert!(:boolean, var, where, raw) do
    case String.downcase(String.trim(raw)) do
      v when v in ["true", "1", "yes"] -> true
      v when v in ["false", "0", "no"] -> false
      _ -> bad_env!(where, var, "a boolean (true/false, 1/0, yes/no)", raw)
    end
  end

  defp convert!(:atom, var, where, raw) do
    trimmed = String.trim(raw)

    if trimmed != "" and String.length(trimmed) <= 255 do
      String.to_atom(trimmed)
    else
      bad_env!(where, var, "an atom name", raw)
    end
  end

  defp convert!(type, var, where, _raw) do
    raise ArgumentError,
          prefix(where) <>
            "expected the type of {:system, type, #{inspect(var)}, default} to be one of " <>
            ":string, :integer, :atom, :boolean, got: #{inspect(type)}"
  end

  defp bad_env!(where, var, expected, raw) do
    raise ArgumentError,
          prefix(where) <> "expected environment variable #{var} to hold #{expected}, got: #{inspect(raw)}"
  end

  @doc """
  Validates `config` against `schema`: returns a map of every schema key, with defaults filled in
  and values normalized by their validators. Unknown keys are logged as a warning, naming the key.
  """
  @spec validate!(Keyword.t(), schema(), atom(), module(), [atom()]) :: map()
  def validate!(config, schema, topology, strategy, aliases \\ []) do
    unless Keyword.keyword?(config) do
      raise ArgumentError,
            "expected the config of topology #{inspect(topology)} to be a keyword list, got: #{inspect(config)}"
    end

    known = Enum.map(schema, &elem(&1, 0)) ++ aliases

    for {key, _} <- config, key not in known do
      Cluster.Logger.warn(
        topology,
        "unknown config key #{inspect(key)} for #{inspect(strategy)} is ignored; known keys: " <>
          Enum.map_join(known, ", ", &inspect/1)
      )
    end

    Map.new(schema, fn {key, default, validator} ->
      case Keyword.fetch(config, key) do
        :error -> {key, default}
        {:ok, value} -> {key, check!(topology, key, value, validator)}
      end
    end)
  end

  @typedoc """
  What a message names: a config key (`:port`), a key inside a keyword option
  (`{:ssl_opts, :verify}`, worded "ssl_opts :verify"), or an environment variable (`"PGPORT"`).
  """
  @type key :: atom() | {atom(), atom()} | String.t()

  @doc """
  The one wording of a value that cannot work: "expected :port to be an integer in 1..65535, got:
  0", with `note` in parentheses after the value when given. Strategies that boot anyway
  (`LibclusterRs.InvalidTopology`) use it for their message; `invalid!/5` raises it.

      iex> LibclusterRs.Config.expected(:port, "an integer in 1..65535", 0)
      "expected :port to be an integer in 1..65535, got: 0"
      iex> LibclusterRs.Config.expected({:ssl_opts, :verify}, ":verify_peer or :verify_none", :yes)
      "expected ssl_opts :verify to be :verify_peer or :verify_none, got: :yes"
      iex> LibclusterRs.Config.expected(:query, "a non-empty string", nil, "the key is required")
      "expected :query to be a non-empty string, got: nil (the key is required)"
  """
  @spec expected(key(), String.t(), term(), String.t() | nil) :: String.t()
  def expected(key, expected, value, note \\ nil) do
    "expected #{key_name(key)} to be #{expected}, got: #{inspect(value)}" <>
      if(note, do: " (#{note})", else: "")
  end

  defp key_name(key) when is_atom(key), do: inspect(key)
  defp key_name({parent, key}) when is_atom(parent) and is_atom(key), do: "#{parent} #{inspect(key)}"
  defp key_name(var) when is_binary(var), do: var

  @doc """
  Raises the ArgumentError of a bad config value of `topology`: "invalid config for topology
  :t: " followed by `expected/4`'s words. The one place a strategy's "expected" error is raised.
  """
  @spec invalid!(atom(), key(), String.t(), term(), String.t() | nil) :: no_return()
  def invalid!(topology, key, expected, value, note \\ nil) do
    raise ArgumentError,
          "invalid config for topology #{inspect(topology)}: " <> expected(key, expected, value, note)
  end

  @doc "Runs one validator, raising the standard ArgumentError on failure."
  @spec check!(atom(), atom(), term(), validator()) :: term()
  def check!(topology, key, value, validator) do
    case validator.(value) do
      {:ok, normalized} -> normalized
      {:error, expected} -> invalid!(topology, key, expected, value)
    end
  end

  @doc "A required key: raises when it is missing or nil."
  @spec required!(map(), atom(), atom(), String.t()) :: term()
  def required!(validated, key, topology, expected) do
    case Map.fetch!(validated, key) do
      nil -> invalid!(topology, key, expected, nil, "the key is required")
      value -> value
    end
  end

  @doc """
  The backoff range of validated options: `:backoff_max` must be at least `:backoff_min`. The one
  check of the range (the membership's redials, Postgres' reconnects); the native side receives
  ranges that passed it.
  """
  @spec backoff_range!(map(), atom()) :: map()
  def backoff_range!(%{backoff_min: min, backoff_max: max} = validated, topology) do
    if max < min, do: invalid!(topology, :backoff_max, "at least :backoff_min (#{min})", max)
    validated
  end

  @doc """
  The environment a strategy reads, as a map: the validated `:env` option when given (tests, and
  callers that want to pin it), else `System.get_env()`, read here once at start. Takes the
  validated options or the raw keyword config. Strategies that read variables list
  `env_key/0` in their schema and never call `System.get_env` themselves.
  """
  @spec env(map() | Keyword.t()) :: %{String.t() => String.t()}
  def env(%{env: env}) when is_map(env), do: env
  def env(config) when is_list(config), do: env(%{env: Keyword.get(config, :env)})
  def env(_), do: System.get_env()

  @doc "The schema entry of the `:env` option (see `env/1`)."
  @spec env_key() :: {:env, nil, validator()}
  def env_key, do: {:env, nil, nullable(&env_map/1)}

  defp env_map(map) when is_map(map) do
    if Enum.all?(map, fn {k, v} -> is_binary(k) and is_binary(v) end),
      do: {:ok, map},
      else: {:error, "a map of string names to string values"}
  end

  defp env_map(_), do: {:error, "a map of string names to string values"}

  ## Validators

  def pos_integer, do: &if(is_integer(&1) and &1 > 0, do: {:ok, &1}, else: {:error, "a positive integer"})

  def non_neg_integer,
    do: &if(is_integer(&1) and &1 >= 0, do: {:ok, &1}, else: {:error, "a non-negative integer"})

  def interval do
    fn
      :infinity -> {:ok, :infinity}
      ms when is_integer(ms) and ms > 0 -> {:ok, ms}
      _ -> {:error, "a positive integer (milliseconds) or :infinity"}
    end
  end

  def port,
    do: &if(is_integer(&1) and &1 in 1..65535, do: {:ok, &1}, else: {:error, "an integer in 1..65535"})

  def boolean, do: &if(is_boolean(&1), do: {:ok, &1}, else: {:error, "a boolean"})

  def atom, do: &if(is_atom(&1) and &1 not in [nil, true, false], do: {:ok, &1}, else: {:error, "an atom"})

  @doc "An http:// or https:// URL (a non-empty string, as `string/0` takes it)."
  def url do
    fn value ->
      case string().(value) do
        {:ok, "http://" <> _ = url} -> {:ok, url}
        {:ok, "https://" <> _ = url} -> {:ok, url}
        _ -> {:error, "an http:// or https:// URL"}
      end
    end
  end

  def string do
    fn
      s when is_binary(s) and s != "" ->
        {:ok, s}

      s when is_list(s) and s != [] ->
        if List.ascii_printable?(s), do: {:ok, List.to_string(s)}, else: {:error, "a non-empty string"}

      _ ->
        {:error, "a non-empty string"}
    end
  end

  def nullable(validator) do
    fn
      nil -> {:ok, nil}
      value -> validator.(value)
    end
  end

  def one_of(values) do
    expected = "one of " <> Enum.map_join(values, ", ", &inspect/1)
    &if &1 in values, do: {:ok, &1}, else: {:error, expected}
  end

  def list_of(validator, what) do
    fn
      list when is_list(list) ->
        case collect(list, validator) do
          {:ok, values} -> {:ok, values}
          :error -> {:error, "a list of #{what}"}
        end

      _ ->
        {:error, "a list of #{what}"}
    end
  end

  @doc "`{:ok, values}` when `fun` returns `{:ok, value}` for every item of `list`, else `:error`."
  @spec collect(list(), (term() -> {:ok, term()} | term())) :: {:ok, list()} | :error
  def collect(list, fun) when is_list(list) do
    list
    |> Enum.reduce_while({:ok, []}, fn item, {:ok, acc} ->
      case fun.(item) do
        {:ok, value} -> {:cont, {:ok, [value | acc]}}
        _ -> {:halt, :error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      :error -> :error
    end
  end

  def fun(arity) do
    &if is_function(&1, arity), do: {:ok, &1}, else: {:error, "a function of arity #{arity}"}
  end

  def mfa do
    fn
      {m, f, a} = mfa when is_atom(m) and is_atom(f) and is_list(a) -> {:ok, mfa}
      _ -> {:error, "an MFA tuple {module, function, args}"}
    end
  end

  @doc "An IP address given as a tuple or a string (v4 or v6)."
  def ip_address do
    fn
      ip when is_tuple(ip) ->
        if :inet.ntoa(ip) |> is_list(), do: {:ok, ip}, else: {:error, "an IP address (tuple or string)"}

      s when is_binary(s) or is_list(s) ->
        case :inet.parse_strict_address(to_charlist(s)) do
          {:ok, ip} -> {:ok, ip}
          _ -> {:error, "an IP address (tuple or string)"}
        end

      _ ->
        {:error, "an IP address (tuple or string)"}
    end
  end
end
