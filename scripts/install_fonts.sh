#!/usr/bin/env bash
# Install the Debian Latin font packages that synth.py renders words with.
#
# Idempotent: packages already installed are skipped, and when all are present the
# script exits without touching apt. Packages this Debian release lacks are skipped
# with a note. Symbol, CJK and emoji fonts are deliberately absent; synth.py also
# filters every font by its cmap, so a stray one could not render tofu anyway.
#
# Usage (as root): scripts/install_fonts.sh
set -euo pipefail

PACKAGES=(
  fonts-dejavu-core fonts-dejavu-extra fonts-liberation2 fonts-croscore
  fonts-urw-base35 fonts-texgyre fonts-noto-core fonts-freefont-ttf
  fonts-crosextra-carlito fonts-crosextra-caladea fonts-roboto fonts-roboto-slab
  fonts-open-sans fonts-lato fonts-cantarell fonts-inter fonts-oxygen fonts-go
  fonts-linuxlibertine fonts-ebgaramond fonts-cardo fonts-fanwood fonts-goudybookletter
  fonts-oldstandard fonts-quattrocento fonts-lindenhill fonts-arapey fonts-century-catalogue
  fonts-sil-andika fonts-sil-charis fonts-sil-gentium-basic fonts-paratype
  fonts-cabin fonts-karla fonts-dosis fonts-b612 fonts-manrope fonts-sora fonts-play
  fonts-quicksand fonts-comfortaa fonts-comic-neue fonts-humor-sans fonts-tuffy
  fonts-junction fonts-jura fonts-league-spartan fonts-beteckna fonts-allerta
  fonts-clear-sans fonts-eurofurence fonts-opendin fonts-routed-gothic fonts-roadgeek
  fonts-national-park fonts-ocr-b
  fonts-adf-gillius fonts-adf-baskervald fonts-adf-universalis fonts-adf-accanthis
  fonts-adf-berenis fonts-averia-sans-gwf fonts-averia-serif-gwf
  fonts-hack fonts-jetbrains-mono fonts-courier-prime fonts-anonymous-pro
  fonts-inconsolata fonts-mononoki
)

is_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_fonts: all ${#PACKAGES[@]} font packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install_fonts: ${#missing[@]} packages missing; run as root to install them: ${missing[*]}" >&2
  exit 1
fi

has_candidate() {
  local cand
  cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# Refresh the package lists only when one of the missing packages is unknown to apt.
for pkg in "${missing[@]}"; do
  if ! has_candidate "$pkg"; then
    apt-get update
    break
  fi
done

available=()
for pkg in "${missing[@]}"; do
  if has_candidate "$pkg"; then
    available+=("$pkg")
  else
    echo "install_fonts: skipping $pkg (no candidate in this release)" >&2
  fi
done

if [ ${#available[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${available[@]}"
fi
echo "install_fonts: installed ${#available[@]} packages"
