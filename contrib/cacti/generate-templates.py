#!/usr/bin/env python3
"""Writes the Cacti 1.2 templates for kai (cacti_kai_templates.xml) to stdout.

The XML follows the format of Cacti's own template export. Hashes are derived from fixed
names, so regenerating gives the same file and re-importing updates in place.
Usage: generate-templates.py > cacti_kai_templates.xml
"""
import base64, hashlib

V = "0103"
def h(kind, name):
    return "hash_%s%s%s" % (kind, V, hashlib.md5(("kai-cacti:" + name).encode()).hexdigest())

NORMAL_GPRINT = "hash_060103e9c43831e54eca8069317a2ce8c6f751"  # Cacti's stock "Normal" (%8.2lf %s)
PROFILE = "hash_200103d62c52891f4f9688729a5bc9fad91b18"       # Cacti's stock "5 Minute Collection"

STATS = [
    # data source, description, rrd type (1 GAUGE, 3 DERIVE)
    ("bytes", "Bytes stored", 1),
    ("curr_items", "Items stored", 1),
    ("cmd_get", "Gets that returned a value", 3),
    ("cmd_set", "Sets", 3),
    ("bytes_read", "Value bytes sent to clients", 3),
    ("bytes_write", "Value bytes received from clients", 3),
]

DI = h("03", "data-input")
def field(name): return h("07", "field-" + name)
def rrd(key, name): return h("08", "rrd-%s-%s" % (key, name))
KIND = {stat: kind for stat, _, kind in STATS}

def t(tag, value, indent):
    return "%s<%s>%s</%s>\n" % ("\t" * indent, tag, value, tag)

def graph(key, title, label, base, lines):
    gt = h("00", "graph-" + key)
    out = "\t<%s>\n" % gt
    out += t("name", "kai - " + title, 2) + t("multiple", "", 2) + t("test_source", "", 2)
    out += "\t\t<graph>\n"
    attrs = [("title", "|host_description| - kai " + title.lower()), ("vertical_label", label),
             ("image_format_id", "1"), ("height", "200"), ("width", "700"), ("base_value", base),
             ("slope_mode", "on"), ("auto_scale", "on"), ("auto_scale_opts", "2"),
             ("auto_scale_log", ""), ("scale_log_units", ""), ("auto_scale_rigid", ""),
             ("upper_limit", "100"), ("lower_limit", "0"), ("unit_value", ""),
             ("unit_exponent_value", ""), ("unit_length", ""), ("no_gridfit", ""),
             ("alt_y_grid", ""), ("right_axis", ""), ("right_axis_label", ""),
             ("right_axis_format", "0"), ("right_axis_formatter", "0"),
             ("left_axis_formatter", "0"), ("auto_padding", "on"), ("dynamic_labels", ""),
             ("force_rules_legend", ""), ("tab_width", "40"), ("legend_position", "0"),
             ("legend_direction", "0")]
    for name, value in attrs:
        out += t("t_" + name, "", 3) + t(name, value, 3)
    out += "\t\t</graph>\n\t\t<items>\n"
    seq = 0
    inputs = []
    for n, (stat, text, kind, color) in enumerate(lines):
        members = []
        rows = [(kind, color, "1", text, "", "1.00" if kind != 7 else "0.00")]
        rows += [(9, "0", "4", "Current:", "", "1.00"), (9, "0", "1", "Average:", "", "1.00"),
                 (9, "0", "3", "Maximum:", "on", "1.00")]
        for r, (gtype, col, cf, fmt, hard, width) in enumerate(rows):
            seq += 1
            md5 = hashlib.md5(("kai-cacti:item-%s-%s-%d" % (key, stat, r)).encode()).hexdigest()
            item = "hash_10" + V + md5
            members.append("hash_00" + V + md5)
            out += "\t\t\t<%s>\n" % item
            for tag, value in [("graph_type_id", gtype), ("task_item_id", rrd(key, stat)),
                               ("color_id", col), ("alpha", "FF"),
                               ("consolidation_function_id", cf), ("cdef_id", "0"),
                               ("vdef_id", "0"), ("shift", ""), ("value", ""),
                               ("gprint_id", NORMAL_GPRINT), ("textalign", ""),
                               ("text_format", fmt), ("hard_return", hard),
                               ("line_width", width), ("dashes", ""), ("dash_offset", "0"),
                               ("sequence", seq)]:
                out += t(tag, value, 4)
            out += "\t\t\t</%s>\n" % item
        inputs.append((stat, members))
    out += "\t\t</items>\n\t\t<inputs>\n"
    for stat, members in inputs:
        gi = h("09", "input-%s-%s" % (key, stat))
        out += "\t\t\t<%s>\n" % gi
        out += t("name", stat + " Data Source", 4) + t("description", "", 4)
        out += t("column_name", "task_item_id", 4) + t("items", "|".join(members), 4)
        out += "\t\t\t</%s>\n" % gi
    out += "\t\t</inputs>\n\t</%s>\n" % gt
    return out

xml = "<cacti>\n"
xml += graph("items", "Items", "items", "1000", [("curr_items", "Items", 7, "4668E4")])
xml += graph("bytes", "Memory", "bytes", "1024", [("bytes", "Bytes stored", 7, "00CF00")])
xml += graph("commands", "Commands", "per second", "1000",
             [("cmd_get", "Gets (hits)", 5, "0000FF"), ("cmd_set", "Sets", 5, "FF0000")])
xml += graph("traffic", "Traffic", "bytes per second", "1024",
             [("bytes_read", "Value bytes to clients", 5, "00CF00"),
              ("bytes_write", "Value bytes from clients", 5, "002A97")])
# One data template per graph: Cacti creates a graph's RRD file with only the data sources
# the graph draws, and updates it with every field its data template maps.
for key, title, stats in [("items", "Items", ["curr_items"]), ("bytes", "Memory", ["bytes"]),
                          ("commands", "Commands", ["cmd_get", "cmd_set"]),
                          ("traffic", "Traffic", ["bytes_read", "bytes_write"])]:
    dt = h("01", "data-template-" + key)
    xml += "\t<%s>\n" % dt + t("name", "kai - " + title, 2) + "\t\t<ds>\n"
    for tag, value in [("name", "|host_description| - kai " + title.lower()),
                       ("data_source_path", ""), ("data_input_id", DI),
                       ("data_source_profile_id", PROFILE), ("rrd_step", "300"),
                       ("active", "on")]:
        # Cacti has no template switch ("t_") for the path and the input method.
        if tag not in ("data_source_path", "data_input_id"):
            xml += t("t_" + tag, "", 3)
        xml += t(tag, value, 3)
    xml += "\t\t</ds>\n\t\t<items>\n"
    for stat in stats:
        xml += "\t\t\t<%s>\n" % rrd(key, stat)
        for tag, value in [("data_source_name", stat), ("rrd_minimum", "0"),
                           ("rrd_maximum", "U"), ("data_source_type_id", KIND[stat]),
                           ("rrd_heartbeat", "600"), ("data_input_field_id", field(stat))]:
            xml += t("t_" + tag, "", 4) + t(tag, value, 4)
        xml += "\t\t\t</%s>\n" % rrd(key, stat)
    xml += "\t\t</items>\n\t\t<data>\n"
    for n, (name, value, per_source) in enumerate([("hostname", "", ""), ("port", "11211", "on")]):
        xml += "\t\t\t<item_%03d>\n" % n + t("data_input_field_id", field(name), 4)
        xml += t("t_value", per_source, 4) + t("value", value, 4) + "\t\t\t</item_%03d>\n" % n
    xml += "\t\t</data>\n\t</%s>\n" % dt
# Data input method.
command = "<path_cacti>/scripts/kai_cacti.sh <hostname> <port>"
xml += "\t<%s>\n" % DI + t("name", "kai - stats", 2) + t("type_id", "1", 2)
xml += t("input_string", base64.b64encode(command.encode()).decode(), 2) + "\t\t<fields>\n"
fields = [("hostname", "Hostname", "in", "hostname"), ("port", "Memcache port", "in", "")]
fields += [(s, d, "out", "") for s, d, _ in STATS]
for name, desc, io, code in fields:
    xml += "\t\t\t<%s>\n" % field(name)
    for tag, value in [("name", desc), ("update_rra", "on" if io == "out" else ""),
                       ("regexp_match", ""), ("allow_nulls", ""), ("type_code", code),
                       ("input_output", io), ("data_name", name)]:
        xml += t(tag, value, 4)
    xml += "\t\t\t</%s>\n" % field(name)
xml += "\t\t</fields>\n\t</%s>\n</cacti>\n" % DI
import sys
sys.stdout.write(xml)
