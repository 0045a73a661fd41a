//! Authoring: report edits and lifecycle actions, each one signed
//! change checked by the core's rules and committed with the report it
//! updates in one transaction.

use super::*;

impl Store {
    /// Creates a draft report; the reporting officer comes from this
    /// device's enrollment.
    pub fn create_report(&self) -> Result<Uuid> {
        drop(self.writer()?); // a wiped store says so, not "no identity"
        let record = self.identity().ok_or(Error::NoIdentity)?;
        let person = &record.person;
        let set = |path: &str, v: &str| Edit::SetField {
            path: path.into(),
            value: Value::Text(v.into()),
        };
        let mut edits = vec![
            set(LIFECYCLE_FIELD, LifecycleState::Draft.as_str()),
            set("reporting_officer.name", &person.name),
            set("reporting_officer.star_number", &person.star_number),
            set("reporting_officer.unit", &person.unit),
        ];
        // Opens this device's person digest on phones without its name.
        if let Some(secret) = &record.person_secret {
            edits.push(set(workflow::REPORTING_OFFICER_PROOF, secret));
        }
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        let nonce = hex::encode(nonce);
        edits.push(set(workflow::CREATION_NONCE, &nonce));
        // The report's id derives from its creation change's id and nonce.
        let created = self.commit_with(
            ReportRef::New { nonce: &nonce },
            &edits,
            Writer::System,
            |_| Ok(()),
        )?;
        Ok(workflow::report_id_for(created, &nonce))
    }

    /// Applies one user action (one or more edits) as one signed change.
    pub fn edit(&self, report: Uuid, edits: &[Edit]) -> Result<ChangeId> {
        self.commit_edits(report, edits, Writer::User)
    }

    pub fn set_field(&self, report: Uuid, path: &str, value: Value) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::SetField {
                path: path.into(),
                value,
            }],
        )
    }

    /// Adds an entry to a collection; returns its id.
    pub fn add_entry(
        &self,
        report: Uuid,
        collection: &str,
        fields: Vec<(String, Value)>,
    ) -> Result<Uuid> {
        let entry = Uuid::new_v4();
        self.edit(
            report,
            &[Edit::AddEntry {
                collection: collection.into(),
                entry,
                fields,
            }],
        )?;
        Ok(entry)
    }

    pub fn set_entry_field(
        &self,
        report: Uuid,
        collection: &str,
        entry: Uuid,
        field: &str,
        value: Value,
    ) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::SetEntryField {
                collection: collection.into(),
                entry,
                field: field.into(),
                value,
            }],
        )
    }

    pub fn remove_entry(&self, report: Uuid, collection: &str, entry: Uuid) -> Result<ChangeId> {
        self.edit(
            report,
            &[Edit::RemoveEntry {
                collection: collection.into(),
                entry,
            }],
        )
    }

    /// Resolves a value conflict on a field or entry field (path form, e.g.
    /// `supervisory_federal_officer.badge_number` or `force/<uuid>/type`) by
    /// setting the chosen value over all the live ones.
    pub fn resolve_conflict(&self, report: Uuid, path: &str, value: Value) -> Result<ChangeId> {
        let target = Target::parse_path(path)?;
        let state = self.state(report)?;
        let in_conflict = state.register(&target).is_some_and(|r| r.is_conflict());
        if !in_conflict {
            return Err(Error::NoConflict(path.to_string()));
        }
        let edit = match target {
            Target::Field(path) => Edit::SetField { path, value },
            Target::EntryField {
                collection,
                entry,
                field,
            } => Edit::SetEntryField {
                collection,
                entry,
                field,
                value,
            },
            Target::Entry { .. } => return Err(Error::NoConflict(path.to_string())),
        };
        self.edit(report, &[edit])
    }

    /// Submits a draft (or returned) report after checking the fields the
    /// order requires.
    pub fn submit(&self, report: Uuid) -> Result<ChangeId> {
        let r = self.report(report)?;
        if !matches!(
            r.lifecycle,
            LifecycleState::Draft | LifecycleState::Returned
        ) {
            return Err(Error::InvalidState {
                state: r.lifecycle.as_str(),
                action: "submit",
            });
        }
        let missing = missing_for_submission(&r);
        if !missing.is_empty() {
            return Err(Error::MissingRequired(missing));
        }
        self.commit_edits(
            report,
            &[Edit::SetField {
                path: LIFECYCLE_FIELD.into(),
                value: Value::Text(LifecycleState::Submitted.as_str().into()),
            }],
            Writer::System,
        )
    }

    /// Moves the report along its lifecycle with the given extra fields, if
    /// the transition fits its current state. Who may is checked when the
    /// change is built (`workflow::authorize`).
    fn transition(
        &self,
        report: Uuid,
        to: LifecycleState,
        action: &'static str,
        mut edits: Vec<Edit>,
    ) -> Result<ChangeId> {
        let from = self.state(report)?.lifecycle.state;
        if !workflow::transition_allowed(from, to) {
            return Err(Error::InvalidState {
                state: from.as_str(),
                action,
            });
        }
        edits.push(Edit::SetField {
            path: LIFECYCLE_FIELD.into(),
            value: Value::Text(to.as_str().into()),
        });
        self.commit_edits(report, &edits, Writer::System)
    }

    fn require_supervisor(&self, action: &'static str) -> Result<()> {
        let me = self.identity().ok_or(Error::NoIdentity)?;
        if me.person.role != crate::model::Role::Supervisor {
            return Err(Error::NotYourRole(action));
        }
        Ok(())
    }

    /// Returns a submitted report to its officer with a comment
    /// (supervisors of the report's unit).
    pub fn return_report(&self, report: Uuid, comment: &str) -> Result<ChangeId> {
        self.require_supervisor("return a report")?;
        if comment.trim().is_empty() {
            return Err(Error::InvalidValue {
                path: RETURN_COMMENT_FIELD.into(),
                reason: "a return needs a comment",
            });
        }
        self.transition(
            report,
            LifecycleState::Returned,
            "return",
            vec![Edit::SetField {
                path: RETURN_COMMENT_FIELD.into(),
                value: Value::Text(comment.into()),
            }],
        )
    }

    /// Approves a submitted report; its fields are locked from then on.
    pub fn approve(&self, report: Uuid) -> Result<ChangeId> {
        self.require_supervisor("approve a report")?;
        self.transition(report, LifecycleState::Approved, "approve", Vec::new())
    }

    /// Refers an approved report's felony matters to the State's Attorney.
    pub fn refer(
        &self,
        report: Uuid,
        date_ms: i64,
        reference: &str,
        felonies: Vec<String>,
    ) -> Result<ChangeId> {
        self.require_supervisor("refer a report")?;
        if felonies.is_empty() {
            return Err(Error::InvalidValue {
                path: "referral.felonies".into(),
                reason: "a referral lists at least one felony matter",
            });
        }
        if reference.trim().is_empty() {
            return Err(Error::InvalidValue {
                path: "referral.reference".into(),
                reason: "a referral needs the State's Attorney's reference",
            });
        }
        self.transition(
            report,
            LifecycleState::Referred,
            "refer",
            vec![
                Edit::SetField {
                    path: "referral.date".into(),
                    value: Value::Time(date_ms),
                },
                Edit::SetField {
                    path: "referral.reference".into(),
                    value: Value::Text(reference.into()),
                },
                Edit::SetField {
                    path: "referral.felonies".into(),
                    value: Value::List(felonies),
                },
            ],
        )
    }

    /// Closes an approved or referred report.
    pub fn close(&self, report: Uuid) -> Result<ChangeId> {
        self.require_supervisor("close a report")?;
        self.transition(report, LifecycleState::Closed, "close", Vec::new())
    }

    /// Records the internal review (supervisors of the report's unit, once
    /// the report is submitted). Recording again amends it; the history
    /// keeps both.
    pub fn record_review(
        &self,
        report: Uuid,
        findings: &str,
        cpd_conduct: &str,
        dispatch_knew: bool,
    ) -> Result<ChangeId> {
        self.require_supervisor("record a review")?;
        let state = self.state(report)?.lifecycle.state;
        if state == LifecycleState::Draft {
            return Err(Error::InvalidState {
                state: state.as_str(),
                action: "review",
            });
        }
        let now = self.clock.now_ms();
        let text = |path: &str, v: &str| Edit::SetField {
            path: path.into(),
            value: Value::Text(v.into()),
        };
        self.commit_edits(
            report,
            &[
                text("review.findings", findings),
                text("review.cpd_conduct", cpd_conduct),
                Edit::SetField {
                    path: "review.dispatch_knew".into(),
                    value: Value::Bool(dispatch_knew),
                },
                Edit::SetField {
                    path: "review.completed_at".into(),
                    value: Value::Time(now),
                },
            ],
            Writer::System,
        )
    }

    /// Streams a file into the media store and attaches it to the report in
    /// a signed change carrying its hash, size and capture facts.
    pub fn attach_media(
        &self,
        report: Uuid,
        path: &Path,
        meta: MediaMeta,
    ) -> Result<AttachedMedia> {
        let mut fields = vec![("mime_type".to_string(), Value::Text(meta.mime_type.clone()))];
        let mut opt = |name: &str, v: Option<Value>| {
            if let Some(v) = v {
                fields.push((name.to_string(), v));
            }
        };
        opt("file_name", meta.file_name.clone().map(Value::Text));
        opt("captured_at", meta.captured_at_ms.map(Value::Time));
        opt("latitude", meta.latitude.map(Value::Float));
        opt("longitude", meta.longitude.map(Value::Float));
        opt("caption", meta.caption.clone().map(Value::Text));
        // Validate everything before touching the disk.
        for (name, v) in &fields {
            schema::validate(
                name,
                schema::entry_field(schema::MEDIA_COLLECTION, name)?,
                v,
            )?;
        }
        if !self.report_exists(report)? {
            return Err(Error::ReportNotFound(report));
        }
        let stored = self.media.ingest(path)?;
        fields.push(("sha256".into(), Value::Text(stored.sha256.clone())));
        fields.push(("size".into(), Value::Int(stored.size as i64)));
        let entry = Uuid::new_v4();
        let now = self.clock.now_ms();
        let sha = stored.sha256.clone();
        let mime = meta.mime_type.clone();
        self.commit_with(
            ReportRef::Existing(report),
            &[Edit::AddEntry {
                collection: schema::MEDIA_COLLECTION.into(),
                entry,
                fields,
            }],
            Writer::System,
            move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO media (sha256, size, mime_type, stored_at) VALUES (?1, ?2, ?3, ?4)",
                    params![sha, stored.size as i64, mime, now],
                )?;
                Ok(())
            },
        )?;
        Ok(AttachedMedia {
            entry,
            sha256: stored.sha256,
            size: stored.size,
        })
    }

    fn commit_edits(&self, report: Uuid, edits: &[Edit], writer: Writer) -> Result<ChangeId> {
        self.commit_with(ReportRef::Existing(report), edits, writer, |_| Ok(()))
    }

    /// Signs and stores one change of `edits` to `report`, or the creation
    /// of a new report whose id derives from the change's id and nonce
    /// (`workflow::report_id_for`).
    fn commit_with(
        &self,
        report: ReportRef<'_>,
        edits: &[Edit],
        writer: Writer,
        extra: impl FnOnce(&rusqlite::Transaction) -> Result<()>,
    ) -> Result<ChangeId> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let identity = w.identity.clone().ok_or(Error::NoIdentity)?;
        let device = identity.device_id();
        let (report, create) = match report {
            ReportRef::Existing(r) => (r, false),
            ReportRef::New { nonce } => (
                workflow::report_id_for(
                    ChangeId {
                        device,
                        seq: w.next_seq,
                    },
                    nonce,
                ),
                true,
            ),
        };
        let tx = w.conn.transaction()?;
        let (mut doc, state) = w.docs.get_or_load(&tx, report)?;
        if doc.is_empty() != create {
            return Err(if create {
                Error::Corrupt("report id collision".into())
            } else {
                Error::ReportNotFound(report)
            });
        }
        let ops = build_ops(&state, edits, writer)?;
        if writer == Writer::User && workflow::locked(state.lifecycle.state) {
            let addenda_only = ops.iter().all(|op| match &op.target {
                Target::Entry { collection, .. } | Target::EntryField { collection, .. } => {
                    collection == schema::ADDENDA_COLLECTION
                }
                Target::Field(_) => false,
            });
            if !addenda_only {
                return Err(Error::InvalidState {
                    state: state.lifecycle.state.as_str(),
                    action: "editing fields (add an addendum instead)",
                });
            }
        }
        let now = self.clock.now_ms();
        let hlc = w.hlc.tick(now.max(0) as u64);
        let body = ChangeBody {
            format: crate::crdt::change::FORMAT_VERSION,
            report,
            device,
            seq: w.next_seq,
            hlc,
            wall_clock_ms: now,
            prev: doc.chain_head(device),
            ops,
        };
        // The same rule every receiver applies (phone and station agree).
        let unit = state
            .field("reporting_officer.unit")
            .and_then(Value::as_text)
            .unwrap_or(&identity.record.person.unit)
            .to_string();
        workflow::authorize(&body, &identity.record, &unit)?;
        let change = Change::sign(body, &identity.signing_key)?;
        let id = change.id();
        insert_change(&tx, &change, false, now)?;
        doc.insert(Arc::new(change));
        let state = Arc::new(doc.materialise());
        write_report_row(&tx, report, &state)?;
        extra(&tx)?;
        tx.commit()?;
        w.docs.put(report, doc, state);
        w.next_seq += 1;
        w.hlc = hlc;
        Ok(id)
    }
}
