#!/bin/sh
# Make sure what the tests talk to is here: PostgreSQL on 127.0.0.1:5432, and the
# independent tools the tests check against (openssl, sshd, xmlsec1, xmllint, pdftotext).
set -e
need=""
command -v openssl >/dev/null 2>&1 || need="$need openssl"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
command -v xmllint >/dev/null 2>&1 || need="$need libxml2-utils"
command -v xmlsec1 >/dev/null 2>&1 || need="$need xmlsec1"
# pdftotext/pdftoppm read the reports back; poppler-data maps the CID font to Unicode, and a CJK
# font lets pdftoppm draw the pages (the PDFs use the built-in CID font STSong-Light).
command -v pdftotext >/dev/null 2>&1 || need="$need poppler-utils"
[ -d /usr/share/poppler/cMap ] || need="$need poppler-data"
# promtool checks and tests the shipped alert rules; systemd-analyze verifies the unit file.
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
fc-list :lang=zh 2>/dev/null | grep -q . || need="$need fonts-wqy-zenhei"
# the console's browser test drives Debian's Chromium through its chromedriver (Selenium), offline.
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$need"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  else
    echo "missing:$need (install them; tests that need them will fail under CI=true)" >&2
  fi
fi
mkdir -p /run/sshd 2>/dev/null || true
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
