//! The document's JSON: ComfyUI's node, slot and link objects read into [`Node`] and [`Link`]
//! (unknown fields kept) and written back in the frontend's form.

use serde_json::{Map, Value, json};

use super::*;

pub(super) fn parse_node(raw: Value) -> Result<Node, String> {
    let Value::Object(mut m) = raw else {
        return Err(format!("expected an object, found {}", json_kind(&raw)));
    };
    let id = m
        .remove("id")
        .as_ref()
        .and_then(as_id)
        .ok_or("its id is missing or not an integer")?;
    let type_ = match m.remove("type") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err(format!("node #{id} has no type")),
    };
    let pos = Pair::from_raw(m.remove("pos").unwrap_or(Value::Null))
        .ok_or_else(|| format!("node #{id} ({type_}) has no valid position"))?;
    let size = match m.remove("size") {
        Some(raw) => Pair::from_raw(raw).unwrap_or_else(|| Pair::new(200.0, 100.0)),
        None => Pair::new(200.0, 100.0),
    };
    let had_mode = m.contains_key("mode");
    let mode = match m.remove("mode") {
        None => Mode::Always,
        Some(v) => Mode::from_i64(
            v.as_i64()
                .ok_or_else(|| format!("node #{id} ({type_}) has a non-integer mode"))?,
        ),
    };
    let title = match m.remove("title") {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            m.insert("title".into(), other);
            None
        }
        None => None,
    };
    let had_inputs = m.contains_key("inputs");
    let inputs = match m.remove("inputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|s| {
                parse_input(s)
                    .ok_or_else(|| format!("node #{id} ({type_}) has a malformed input slot"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("node #{id} ({type_}): inputs is not a list")),
    };
    let had_outputs = m.contains_key("outputs");
    let outputs = match m.remove("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|s| {
                parse_output(s)
                    .ok_or_else(|| format!("node #{id} ({type_}) has a malformed output slot"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("node #{id} ({type_}): outputs is not a list")),
    };
    let widgets_values = m.remove("widgets_values");
    Ok(Node {
        id,
        type_,
        title,
        pos,
        size,
        mode,
        inputs,
        outputs,
        widgets_values,
        fields: m,
        had_mode,
        had_inputs,
        had_outputs,
    })
}

fn parse_input(raw: Value) -> Option<InputSlot> {
    let Value::Object(mut m) = raw else {
        return None;
    };
    let Value::String(name) = m.remove("name")? else {
        return None;
    };
    let type_ = m.remove("type").unwrap_or(Value::String("*".into()));
    // The "link" key stays in `fields` so that its presence (even as null) round-trips; the typed
    // value is authoritative on write.
    let link = match m.get("link") {
        None | Some(Value::Null) => None,
        Some(v) => Some(as_id(v)?),
    };
    Some(InputSlot {
        name,
        type_,
        link,
        fields: m,
    })
}

fn parse_output(raw: Value) -> Option<OutputSlot> {
    let Value::Object(mut m) = raw else {
        return None;
    };
    let Value::String(name) = m.remove("name")? else {
        return None;
    };
    let type_ = m.remove("type").unwrap_or(Value::String("*".into()));
    let links = match m.get("links") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a.iter().map(as_id).collect::<Option<Vec<_>>>()?),
        Some(_) => return None,
    };
    Some(OutputSlot {
        name,
        type_,
        links,
        fields: m,
    })
}

pub(super) fn parse_link(raw: Value) -> Result<Link, String> {
    match raw {
        Value::Array(a) => {
            if a.len() < 5 {
                return Err(format!(
                    "expected [id, origin, slot, target, slot, type], found {} items",
                    a.len()
                ));
            }
            let bad = || format!("link {} has a non-integer id or slot", a[0]);
            Ok(Link {
                id: as_id(&a[0]).ok_or_else(bad)?,
                origin_id: as_id(&a[1]).ok_or_else(bad)?,
                origin_slot: as_index(&a[2]).ok_or_else(bad)?,
                target_id: as_id(&a[3]).ok_or_else(bad)?,
                target_slot: as_index(&a[4]).ok_or_else(bad)?,
                type_: a.get(5).cloned().unwrap_or(Value::String("*".into())),
                fields: Map::new(),
            })
        }
        Value::Object(mut m) => {
            let mut take = |k: &str| m.remove(k);
            let id = take("id").as_ref().and_then(as_id);
            let bad = || {
                format!(
                    "link {} has a missing or non-integer field",
                    id.map_or("?".into(), |i| i.to_string())
                )
            };
            let origin_id = take("origin_id").as_ref().and_then(as_id).ok_or_else(bad)?;
            let origin_slot = take("origin_slot")
                .as_ref()
                .and_then(as_index)
                .ok_or_else(bad)?;
            let target_id = take("target_id").as_ref().and_then(as_id).ok_or_else(bad)?;
            let target_slot = take("target_slot")
                .as_ref()
                .and_then(as_index)
                .ok_or_else(bad)?;
            let type_ = take("type").unwrap_or(Value::String("*".into()));
            Ok(Link {
                id: id.ok_or_else(bad)?,
                origin_id,
                origin_slot,
                target_id,
                target_slot,
                type_,
                fields: m,
            })
        }
        other => Err(format!(
            "expected an array or object, found {}",
            json_kind(&other)
        )),
    }
}

pub(super) fn node_to_json(n: &Node) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(n.id));
    m.insert("type".into(), json!(n.type_));
    if let Some(t) = &n.title {
        m.insert("title".into(), json!(t));
    }
    m.insert("pos".into(), n.pos.raw().clone());
    m.insert("size".into(), n.size.raw().clone());
    for (k, v) in &n.fields {
        m.insert(k.clone(), v.clone());
    }
    if n.had_mode || n.mode != Mode::Always {
        m.insert("mode".into(), json!(n.mode.as_i64()));
    }
    if n.had_inputs || !n.inputs.is_empty() {
        let inputs = n
            .inputs
            .iter()
            .map(|i| {
                let mut s = Map::new();
                s.insert("name".into(), json!(i.name));
                s.insert("type".into(), i.type_.clone());
                for (k, v) in &i.fields {
                    s.insert(k.clone(), v.clone());
                }
                if i.link.is_some() || s.contains_key("link") {
                    s.insert("link".into(), i.link.map_or(Value::Null, |l| json!(l)));
                }
                Value::Object(s)
            })
            .collect();
        m.insert("inputs".into(), Value::Array(inputs));
    }
    if n.had_outputs || !n.outputs.is_empty() {
        let outputs = n
            .outputs
            .iter()
            .map(|o| {
                let mut s = Map::new();
                s.insert("name".into(), json!(o.name));
                s.insert("type".into(), o.type_.clone());
                for (k, v) in &o.fields {
                    s.insert(k.clone(), v.clone());
                }
                if o.links.is_some() || s.contains_key("links") {
                    s.insert(
                        "links".into(),
                        o.links.as_ref().map_or(Value::Null, |l| json!(l)),
                    );
                }
                Value::Object(s)
            })
            .collect();
        m.insert("outputs".into(), Value::Array(outputs));
    }
    if let Some(w) = &n.widgets_values {
        m.insert("widgets_values".into(), w.clone());
    }
    Value::Object(m)
}

pub(super) fn link_to_json(l: &Link, form: LinkForm) -> Value {
    match form {
        LinkForm::Arrays => json!([
            l.id,
            l.origin_id,
            l.origin_slot,
            l.target_id,
            l.target_slot,
            l.type_
        ]),
        LinkForm::Objects => {
            let mut m = Map::new();
            m.insert("id".into(), json!(l.id));
            m.insert("origin_id".into(), json!(l.origin_id));
            m.insert("origin_slot".into(), json!(l.origin_slot));
            m.insert("target_id".into(), json!(l.target_id));
            m.insert("target_slot".into(), json!(l.target_slot));
            m.insert("type".into(), l.type_.clone());
            for (k, v) in &l.fields {
                m.insert(k.clone(), v.clone());
            }
            Value::Object(m)
        }
    }
}
