# A stand-in for nixpkgs, for testing the root flake.nix offline
# (`--override-input nixpkgs path:<copy of this folder>`).
#
# It has only what the root flake uses. Packages are plain paths: python3
# is the interpreter prefix written in the file ./python-prefix (the test
# writes it into its copy), so that the shells' `uv sync` uses that Python;
# mkShell is a bare derivation whose attributes (shellHook, UV_PYTHON...)
# reach `nix develop` as they would with the real mkShell. `packages` are not
# put on PATH: uv and git come from the caller's PATH.
{
  description = "nahual test: a nixpkgs stub with lib.genAttrs, mkShell and a few package paths";

  outputs = { self }:
    let
      lib = {
        genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
        filterAttrs = pred: set:
          builtins.removeAttrs set (builtins.filter (name: !(pred name set.${name})) (builtins.attrNames set));
        makeLibraryPath = packages: builtins.concatStringsSep ":" (map (p: "${p}/lib") packages);
        optionalString = cond: text: if cond then text else "";
      };
      prefix = if builtins.pathExists ./python-prefix then builtins.readFile ./python-prefix else "";
      pkgsFor = system: {
        inherit lib;
        python3 = if prefix == "" then "/stub/python3" else prefix;
        uv = "/stub/uv";
        git = "/stub/git";
        zlib = "/stub/zlib";
        libGL = "/stub/libGL";
        glib = "/stub/glib";
        stdenv.cc.cc.lib = "/stub/libstdcxx";
        mkShell = attrs: builtins.derivation ((builtins.removeAttrs attrs [ "packages" ]) // {
          inherit system;
          builder = "/bin/bash";
          args = [ "-c" "echo stub-shell > $out" ];
          outputs = [ "out" ];
          NAHUAL_STUB_PACKAGES = toString attrs.packages;
        });
      };
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
    };
}
