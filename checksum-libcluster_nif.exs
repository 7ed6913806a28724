# SHA-256 of each precompiled NIF artifact of this version, written by
# `mix libcluster_rs.checksum` (docs/releasing.md). The compiler refuses any artifact
# that is not listed here or does not match.
#
# Empty until the first release publishes artifacts: until then a dependency on libcluster_rs
# builds its NIF from source (cargo on the PATH, or LIBCLUSTER_RS_BUILD=1).
%{}
