#!/bin/sh
# Derives the signed golden pain.001 from the hand-written pain001.xml with the command-line
# tools only (openssl, xmlsec1, xmllint): nothing of ours. See ../README.md.
set -e
cd "$(dirname "$0")"
XSD=${XSD:-../../../../shared/xsd/iso20022/pain.001.001.10.xsd}
if [ ! -f key.pem ]; then
  # A test key and a self-signed certificate valid for 100 years: no test depends on today.
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 36500 -subj "/CN=golden-gateway" \
    -set_serial 1 -keyout key.pem -out cert.pem 2>/dev/null
fi
xmllint --noout --schema "$XSD" pain001.xml
# The enveloped signature template, by hand: RSA-SHA256, exclusive c14n, one Reference URI=""
# with enveloped-signature then exclusive c14n, SHA-256, the certificate in KeyInfo/X509Data;
# placed where an ISO 20022 message can carry it: a last SplmtryData/Envlp of the message.
DS='xmlns:ds="http://www.w3.org/2000/09/xmldsig#"'
TEMPLATE="<SplmtryData><Envlp><ds:Signature $DS><ds:SignedInfo>\
<ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\
<ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>\
<ds:Reference URI=\"\"><ds:Transforms>\
<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\
<ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/></ds:Transforms>\
<ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/><ds:DigestValue/></ds:Reference>\
</ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data><ds:X509Certificate/></ds:X509Data>\
</ds:KeyInfo></ds:Signature></Envlp></SplmtryData>"
sed "s|</CstmrCdtTrfInitn>|$TEMPLATE</CstmrCdtTrfInitn>|" pain001.xml > pain001.template.xml
xmlsec1 --sign --privkey-pem key.pem,cert.pem --output pain001.signed.xml pain001.template.xml
xmlsec1 --verify --pubkey-cert-pem cert.pem pain001.signed.xml
xmllint --noout --schema "$XSD" pain001.signed.xml
