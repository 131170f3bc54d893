#!/bin/sh
# End-to-end check of the templates against a real Cacti, on a DISPOSABLE host: it drops
# and recreates the "cacti" database. Needs Debian's cacti (with its database configured),
# a running MariaDB, /usr/bin/kai and a kai node on 127.0.0.1:11211.
# Imports cacti_kai_templates.xml into an empty Cacti, adds a device with every kai graph,
# polls twice and prints what each RRD file received next to `kai stats --cacti`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cli=/usr/share/cacti/cli
site=/usr/share/cacti/site
mysql -e "drop database if exists cacti; create database cacti"
mysql cacti < /usr/share/dbconfig-common/data/cacti/install/mysql
rm -f /var/lib/cacti/rra/*.rrd
install -m 755 "$here/kai_cacti.sh" "$site/scripts/kai_cacti.sh"
php "$cli/import_template.php" --filename="$here/cacti_kai_templates.xml" --with-profile \
	| sed -n 's/.*\(kai - [A-Za-z]*\).*\[\([a-z]*\)\].*/\1 [\2]/p'
php "$cli/add_device.php" --description=kai --ip=127.0.0.1 --template=0 --avail=none | tail -1
for template in $(mysql -N cacti -e "select id from graph_templates where name like 'kai - %'"); do
	php "$cli/add_graphs.php" --host-id=1 --graph-type=cg --graph-template-id="$template" | tail -1
done
php "$cli/rebuild_poller_cache.php" > /dev/null
php "$site/poller.php" --force > /dev/null
sleep 2
php "$site/poller.php" --force > /dev/null
for rrd in /var/lib/cacti/rra/*.rrd; do
	printf '%s: %s\n' "$(basename "$rrd")" "$(rrdtool lastupdate "$rrd" | sed -n '1p;3p' | tr -s '\n' ' ')"
done
echo "kai: $("$here/kai_cacti.sh" 127.0.0.1 11211)"
