# A flake whose devShell does not evaluate, for the error nahual reports when Nix fails.
#
# `nix develop path:<copy>#default` fails with "error: attribute 'pythonPath'
# missing" (where it happens, then a `--show-trace` hint). nahual env-prepare
# and nahual envs must show that line, not the hint.
{
  description = "nahual test: a devShell with an evaluation error";

  outputs = { self }:
    let
      settings = { };
      shell = system: builtins.derivation {
        name = "nahual-broken-shell";
        inherit system;
        builder = "/bin/bash";
        args = [ "-c" "echo nahual-broken-shell > $out" ];
        outputs = [ "out" ];
        shellHook = settings.pythonPath;
      };
    in
    {
      devShells = builtins.listToAttrs (map (system: {
        name = system;
        value = { default = shell system; };
      }) [ "x86_64-linux" "aarch64-linux" ]);
    };
}
