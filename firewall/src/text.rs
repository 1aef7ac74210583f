//! nft's text syntax for the objects [`crate::ruleset`] builds, for the dry run and the
//! portal's "effective ruleset" view. It covers exactly the expressions the ruleset uses; a
//! test loads the text into a kernel and compares it with the JSON the controller applies.

use std::fmt::Write;

use nftables::expr::{Expression, MetaKey, NamedExpression, Payload, SetItem};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, SetTypeValue};
use nftables::stmt::{Counter, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType};

use crate::ruleset::TABLE;

/// Renders a batch made by `replace_table` as an nft script.
pub fn render(batch: &Nftables) -> String {
    let objects: Vec<&NfListObject> = batch
        .objects
        .iter()
        .filter_map(|object| match object {
            NfObject::CmdObject(NfCmd::Add(object)) => Some(object),
            _ => None,
        })
        .collect();
    let mut out = format!("table inet {TABLE} {{\n");
    for object in &objects {
        match object {
            NfListObject::Set(set) => {
                let _ = writeln!(
                    out,
                    "\tset {} {{\n\t\ttype {}\n\t\tflags timeout",
                    set.name,
                    type_of(&set.set_type)
                );
                elements_of(&objects, &set.name, &mut out);
                out.push_str("\t}\n");
            }
            NfListObject::Map(map) => {
                let _ = writeln!(
                    out,
                    "\tmap {} {{\n\t\ttype {} : {}\n\t\tflags timeout",
                    map.name,
                    type_of(&map.set_type),
                    type_of(&map.map)
                );
                elements_of(&objects, &map.name, &mut out);
                out.push_str("\t}\n");
            }
            NfListObject::Counter(counter) => {
                let _ = writeln!(out, "\tcounter {} {{\n\t}}", counter.name);
            }
            _ => {}
        }
    }
    for object in &objects {
        let NfListObject::Chain(chain) = object else {
            continue;
        };
        let _ = writeln!(out, "\n\tchain {} {{", chain.name);
        if let (Some(kind), Some(hook), Some(prio), Some(policy)) =
            (&chain._type, &chain.hook, chain.prio, &chain.policy)
        {
            let kind = match kind {
                NfChainType::NAT => "nat",
                NfChainType::Route => "route",
                NfChainType::Filter => "filter",
            };
            let hook = format!("{hook:?}").to_lowercase();
            let policy = if matches!(policy, NfChainPolicy::Drop) {
                "drop"
            } else {
                "accept"
            };
            let _ = writeln!(
                out,
                "\t\ttype {kind} hook {hook} priority {prio}; policy {policy};"
            );
        }
        for rule in &objects {
            if let NfListObject::Rule(rule) = rule
                && rule.chain == chain.name
            {
                let parts: Vec<String> = rule.expr.iter().map(statement).collect();
                let _ = writeln!(out, "\t\t{}", parts.join(" "));
            }
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn type_of(value: &SetTypeValue) -> String {
    let name = |t: &nftables::schema::SetType| {
        serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    match value {
        SetTypeValue::Single(t) => name(t),
        SetTypeValue::Concatenated(types) => types.iter().map(name).collect::<Vec<_>>().join(" . "),
    }
}

fn elements_of(objects: &[&NfListObject], name: &str, out: &mut String) {
    let elements: Vec<String> = objects
        .iter()
        .filter_map(|object| match object {
            NfListObject::Element(element) if element.name == name => {
                Some(element.elem.iter().map(expression))
            }
            _ => None,
        })
        .flatten()
        .collect();
    if !elements.is_empty() {
        let _ = writeln!(
            out,
            "\t\telements = {{ {} }}",
            elements.join(",\n\t\t\t     ")
        );
    }
}

fn statement(stmt: &Statement) -> String {
    match stmt {
        Statement::Match(m) => {
            let left = expression(&m.left);
            let right = match (&m.left, &m.right) {
                // Interface names are strings in nft's grammar; other symbols are bare words,
                // and so is a set reference (`iifname @lease`).
                (Expression::Named(NamedExpression::Meta(meta)), Expression::String(name))
                    if matches!(meta.key, MetaKey::Iifname | MetaKey::Oifname)
                        && !name.starts_with('@') =>
                {
                    format!("{name:?}")
                }
                (_, right) => expression(right),
            };
            match m.op {
                Operator::EQ | Operator::IN => format!("{left} {right}"),
                Operator::NEQ => format!("{left} != {right}"),
                _ => format!(
                    "{left} {} {right}",
                    serde_json::to_value(m.op)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            }
        }
        Statement::Accept(_) => "accept".to_owned(),
        Statement::Drop(_) => "drop".to_owned(),
        Statement::Counter(Counter::Named(name)) => format!("counter name {name:?}"),
        Statement::Counter(Counter::Anonymous(_)) => "counter".to_owned(),
        Statement::Limit(limit) => {
            let burst = limit
                .burst
                .map(|b| format!(" burst {b} packets"))
                .unwrap_or_default();
            format!(
                "limit rate {}/{}{burst}",
                limit.rate,
                limit.per.as_deref().unwrap_or("second")
            )
        }
        Statement::Log(log) => match log.as_ref().and_then(|l| l.prefix.as_ref()) {
            Some(prefix) => format!("log prefix {prefix:?}"),
            None => "log".to_owned(),
        },
        Statement::Masquerade(_) => "masquerade".to_owned(),
        Statement::DNAT(Some(nat)) => {
            let part = |e: &Option<Expression>| match e {
                Some(Expression::Named(NamedExpression::Map(map))) => {
                    format!("{} map {}", expression(&map.key), expression(&map.data))
                }
                Some(other) => expression(other),
                None => String::new(),
            };
            match &nat.port {
                Some(_) => format!("dnat ip to {} : {}", part(&nat.addr), part(&nat.port)),
                None => format!("dnat ip to {}", part(&nat.addr)),
            }
        }
        other => format!("# unsupported statement {other:?}"),
    }
}

fn expression(expr: &Expression) -> String {
    match expr {
        Expression::String(s) => s.to_string(),
        Expression::Number(n) => n.to_string(),
        Expression::Boolean(b) => b.to_string(),
        Expression::List(items) => items.iter().map(expression).collect::<Vec<_>>().join(" : "),
        Expression::Range(range) => format!(
            "{}-{}",
            expression(&range.range[0]),
            expression(&range.range[1])
        ),
        Expression::Named(named) => match named {
            NamedExpression::Concat(parts) => {
                parts.iter().map(expression).collect::<Vec<_>>().join(" . ")
            }
            NamedExpression::Set(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        SetItem::Element(e) => expression(e),
                        other => format!("{other:?}"),
                    })
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
            NamedExpression::Meta(meta) => match meta.key {
                MetaKey::Iifname => "iifname".to_owned(),
                MetaKey::Oifname => "oifname".to_owned(),
                key => format!("meta {}", format!("{key:?}").to_lowercase()),
            },
            NamedExpression::Payload(Payload::PayloadField(f)) => {
                format!("{} {}", f.protocol, f.field)
            }
            NamedExpression::CT(ct) => format!("ct {}", ct.key),
            NamedExpression::Elem(elem) => {
                let timeout = elem
                    .timeout
                    .map(|t| format!(" timeout {t}s"))
                    .unwrap_or_default();
                format!("{}{timeout}", expression(&elem.val))
            }
            other => format!("# unsupported expression {other:?}"),
        },
        other => format!("# unsupported expression {other:?}"),
    }
}
