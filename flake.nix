# nahual on Nix: one devShell per model environment plus one for the orchestrator.
#
#   nix develop .#default                               # orchestrator: snakemake, zarr, nahual
#   nix develop .#threshold --command nahual serve ipc:///tmp/nahual/threshold.sock
#   nahual serve ADDRESS --env nix:.#threshold          # the same, through nahual's launcher
#
# Every folder envs/NAME with a pyproject.toml becomes the shell .#NAME. The
# shell brings nixpkgs' Python 3 and uv; its shellHook syncs the locked uv
# environment envs/NAME/.venv (`uv sync --locked`, never downloading a Python)
# and activates it, so that `python` and `nahual` are the environment's own.
# An environment that needs a GPU says so in its pyproject.toml:
#
#   [tool.nahual]
#   cuda = true
#
# and its shell adds the NVIDIA driver's libraries (/run/opengl-driver/lib on
# NixOS, or $NAHUAL_CUDA_LIBS) to LD_LIBRARY_PATH; the CUDA runtime itself
# comes with the PyPI wheels (torch and its nvidia-* packages) in the lock.
# The torch shells (.#cellpose, .#cellpose-sam, .#trackastra, .#dino) sync the lock as
# it is, CUDA build included; on a machine without a GPU use the uv spec's CPU
# switch instead (uv:envs/cellpose?torch=cpu, see docs/deep-models.md).
# See docs/environments.md.
{
  description = "nahual: bioimage model servers, each in its own environment, and a Snakemake workflow";

  # nixos-unstable: a uv recent enough to read the locks that current uv writes (pinned by flake.lock).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # envs/NAME folders that hold a uv project.
      envNames =
        if builtins.pathExists ./envs then
          builtins.filter
            (name: builtins.pathExists (./envs + "/${name}/pyproject.toml"))
            (builtins.attrNames (nixpkgs.lib.filterAttrs (_: kind: kind == "directory") (builtins.readDir ./envs)))
        else [ ];

      wantsCuda = name:
        let project = builtins.fromTOML (builtins.readFile (./envs + "/${name}/pyproject.toml"));
        in (((project.tool or { }).nahual or { }).cuda or false);

      # A shell that syncs the uv project at PROJECT (relative to the checkout) and activates its venv.
      uvShell = pkgs: { name, project, syncArgs ? "", cuda ? false }:
        let
          python = pkgs.python3;
          # Libraries that manylinux wheels (numpy, scipy, scikit-image, torch) expect from the system.
          libs = pkgs.lib.makeLibraryPath [ pkgs.stdenv.cc.cc.lib pkgs.zlib pkgs.libGL pkgs.glib ];
        in
        pkgs.mkShell {
          name = "nahual-${name}";
          packages = [ python pkgs.uv pkgs.git ];
          UV_PYTHON_DOWNLOADS = "never";
          UV_PYTHON = "${python}/bin/python3";
          NAHUAL_SHELL = name;
          shellHook = ''
            nahual_root="''${NAHUAL_ROOT:-$(git rev-parse --show-toplevel 2>/dev/null || pwd)}"
            nahual_project="$nahual_root/${project}"
            export LD_LIBRARY_PATH="${libs}${pkgs.lib.optionalString cuda ":\${NAHUAL_CUDA_LIBS:-/run/opengl-driver/lib}"}''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            if [ ! -f "$nahual_project/pyproject.toml" ]; then
              echo "nahual: $nahual_project/pyproject.toml not found; run nix develop from the nahual checkout or set NAHUAL_ROOT" >&2
            else
              nahual_lock=""
              [ -f "$nahual_project/uv.lock" ] && nahual_lock="--locked"
              uv sync --quiet --compile-bytecode --project "$nahual_project" $nahual_lock ${syncArgs} \
                || echo "nahual: uv sync of $nahual_project failed" >&2
              export VIRTUAL_ENV="$nahual_project/.venv"
              export PATH="$VIRTUAL_ENV/bin:$PATH"
            fi
          '';
        };
    in
    {
      devShells = forAllSystems (pkgs:
        builtins.listToAttrs (map
          (name: {
            inherit name;
            value = uvShell pkgs { inherit name; project = "envs/${name}"; cuda = wantsCuda name; };
          })
          envNames)
        // {
          # The orchestrator: nahual with the workflow extra (Snakemake, zarr, uv) in the checkout's .venv.
          default = uvShell pkgs { name = "orchestrator"; project = "."; syncArgs = "--extra workflow"; };
        });
    };
}
