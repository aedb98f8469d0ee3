# Set up a fresh machine and run the project (Windows twin of dev.sh).
#   .\dev.ps1             install, fetch models, run the main job (VIDEO_SOURCE from .env, else the demo)
#   .\dev.ps1 test [ARGS] install, fetch models, lint, run the tests (ARGS go to pytest)
#   .\dev.ps1 setup       install and fetch models only
#   .\dev.ps1 run [ARGS]  run the pipeline: python -m app.main ARGS
param([string]$Command = "main", [Parameter(ValueFromRemainingArguments = $true)][string[]]$Rest = @())
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot
# Flags with no command are the main job's: .\dev.ps1 --no-gui --max-frames 30
if ($Command.StartsWith("-")) { $Rest = @($Command) + $Rest; $Command = "main" }

$Python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$PoetryVersion = "2.5.1"
$MirrorPluginVersion = "0.6.5"
$Poetry = Join-Path $PSScriptRoot ".tools\poetry\Scripts\poetry.exe"
$ToolPython = Join-Path $PSScriptRoot ".tools\poetry\Scripts\python.exe"
$VenvPython = Join-Path $PSScriptRoot ".venv\Scripts\python.exe"

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

function Setup {
    & $Python -c "import sys; sys.exit(sys.version_info < (3, 11))"
    if ($LASTEXITCODE -ne 0) { Write-Error "error: Python 3.11 or newer is needed (set `$env:PYTHON)"; exit 2 }
    if (-not (Test-Path $Poetry)) {
        Write-Host "== installing Poetry into .tools\poetry"
        Invoke-Checked $Python @("-m", "venv", ".tools\poetry")
        Invoke-Checked $ToolPython @("-m", "pip", "install", "-q", "--disable-pip-version-check",
            "poetry==$PoetryVersion", "poetry-plugin-pypi-mirror==$MirrorPluginVersion")
    }
    # Poetry reads the index's JSON API, which a simple-index mirror lacks; the mirror plugin makes it use the
    # index pip itself uses, read at run time so no host name is written into the project.
    if (-not $env:POETRY_PYPI_MIRROR_URL) {
        if ($env:PIP_INDEX_URL) { $env:POETRY_PYPI_MIRROR_URL = $env:PIP_INDEX_URL }
        else { $env:POETRY_PYPI_MIRROR_URL = & $ToolPython -c "from pip._internal.models.index import PyPI; print(PyPI.simple_url)" }
    }
    $env:POETRY_VIRTUALENVS_IN_PROJECT = "true"
    $env:POETRY_VIRTUALENVS_PREFER_ACTIVE_PYTHON = "true"
    & $Poetry check --lock | Out-Null
    if ($LASTEXITCODE -ne 0) { Write-Error "error: poetry.lock does not match pyproject.toml: run '$Poetry lock'"; exit 2 }
    Write-Host "== installing dependencies into .venv"
    Invoke-Checked $Poetry @("env", "use", "-q", $Python)
    Invoke-Checked $Poetry @("install", "-q", "--no-interaction")
    Write-Host "== fetching default models and demo images"
    Invoke-Checked $VenvPython @("-m", "app.models", "fetch")
}

switch ($Command) {
    "setup" { Setup }
    "test" {
        Setup
        if ($env:TEST_TORCH -eq "1") {
            # Optional torch backend, CPU build, so its tests compare it with ONNX Runtime here too.
            Write-Host "== installing the optional torch backend (CPU) for its tests"
            Invoke-Checked $VenvPython @("-m", "pip", "install", "-q", "torch==2.13.0")
            Invoke-Checked $VenvPython @("-m", "pip", "install", "-q", "--no-deps", "onnx2torch==1.5.15")
        }
        Write-Host "== lint"
        Invoke-Checked $VenvPython @("-m", "ruff", "check", ".")
        Invoke-Checked $VenvPython @("-m", "ruff", "format", "--check", ".")
        Write-Host "== tests"
        Invoke-Checked $VenvPython (@("-m", "pytest") + $Rest)
    }
    "run" {
        Setup
        Invoke-Checked $VenvPython (@("-m", "app.main") + $Rest)
    }
    "main" {
        Setup
        $Source = & $VenvPython -m app.config video-source
        if ($LASTEXITCODE -ne 0) { exit 2 }
        if ($Source) {
            # As the original's dev script did: run against the camera or file named in .env.
            Invoke-Checked $VenvPython (@("-m", "app.main") + $Rest)
        } else {
            Invoke-Checked $VenvPython (@("-m", "app.demo", "run") + $Rest)
        }
    }
    default { Write-Error "error: unknown command '$Command' (use: test, setup, run, or nothing for the main job)"; exit 2 }
}
