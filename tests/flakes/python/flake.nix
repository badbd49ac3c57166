# A flake with no inputs, for testing the nix backend offline.
#
# Its devShell is a bare derivation (no nixpkgs): its shellHook puts the
# directory named by $NAHUAL_TEST_PYTHON_BIN first on PATH, so that
# `nix develop path:<copy>#default --command python -m nahual serve ...`
# runs the interpreter under test. The shell also exports NAHUAL_TEST_SHELL,
# which the test reads back to prove that the command ran inside the shell.
{
  description = "nahual test: an input-less devShell that runs a given Python";

  outputs = { self }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      shell = system: builtins.derivation {
        name = "nahual-test-shell";
        inherit system;
        builder = "/bin/bash";
        args = [ "-c" "echo nahual-test-shell > $out" ];
        outputs = [ "out" ];
        NAHUAL_TEST_SHELL = "python";
        shellHook = ''
          export PATH="''${NAHUAL_TEST_PYTHON_BIN:?set NAHUAL_TEST_PYTHON_BIN to a folder with python}:$PATH"
        '';
      };
    in
    {
      devShells = builtins.listToAttrs (map (system: {
        name = system;
        value = { default = shell system; };
      }) systems);
    };
}
